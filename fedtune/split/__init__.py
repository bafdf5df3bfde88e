"""Split federated prompt tuning (SFPrompt, :mod:`fedtune.algorithms.split_prompt`): the model
cut at a block (:mod:`.model`), a client's local work (:mod:`.client`). The tensors' names
inside the step messages' bundles (the record keys are :mod:`fedtune.wire`'s) are below."""

PROMPT_NAME = "prompt"  # in wire.PROMPT's bundle: (P, H) float32
ACTIVATIONS_NAME = "activations"  # in wire.ACTIVATIONS' bundle: (B, P+T, H) float32
GRADIENT_NAME = "gradient"  # in wire.GRADIENT's bundle: (B, P+T, H) float32
