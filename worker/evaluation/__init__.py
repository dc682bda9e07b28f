"""`vlmnode-eval`: how often task_timing_v1 finds when a task started and
ended, over a labelled set (cases.py), scored as the temporal-grounding
literature scores it (scoring.py), against any configured engine (run.py)."""
