"""The network itself (SegMLLM + SAM2 bridge), shared by inference actors and training workers."""
