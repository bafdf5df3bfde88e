"""The client side of a round: message handling for the ZO and LoRA clients, node state, SecAgg+."""
