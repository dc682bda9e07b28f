"""Fake peers that speak the real protocols: Ollama, an OpenAI-compatible
server (vLLM, llama-server), posemesh, a webhook
receiver, a TCP proxy that can be cut, and the images they serve.

Each is a model of the real system written from its source (the files are
named in comments) and never kinder than it. `make demo`, the benchmarks and
the tests all run them; none of them ships in the node's image.
"""
