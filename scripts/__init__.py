"""Command-line tools: the local cloud, the demo, benchmarks, image and deploy helpers."""
