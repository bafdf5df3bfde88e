"""The server side of a round: the strategies (seed and LoRA), the round template, SecAgg+."""
