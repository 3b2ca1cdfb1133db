"""Framework-free inference: GGUF reading, ONNX shard building, the shard runtime and the generator.

Nothing here imports Django, so the provider agent, the referee and the benchmarks can all use it.
"""
