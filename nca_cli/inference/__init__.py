"""Inference: driving the octree levels with the reference or the fused step."""
