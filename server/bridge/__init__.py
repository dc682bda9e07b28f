"""The HTTP/WebSocket bridge: the original node's REST and WebSocket endpoints,
served as a client of the gRPC API through a channel."""
