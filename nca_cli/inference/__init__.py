"""Inference on inputs of any size: the octree driver (one shared state buffer, the fused or the
reference step), exact tiles, overlapping windows for patch-wise networks, the memory model
that plans a run before it starts, and the predictors that put them behind one protocol."""
