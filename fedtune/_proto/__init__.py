"""Code generated from proto/*.proto by grpcio-tools (python proto/generate.py). Do not edit."""
