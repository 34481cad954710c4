"""Greedy gaze-label search (the paper's stage 1): the compiled search, resumable label shards, the loop."""
