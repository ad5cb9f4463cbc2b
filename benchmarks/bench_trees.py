"""The benchmark's state trees W1-W3 and W5, built the same way on every run.

W1: 512 MiB in 16 float32 matrices. W2: 256 MiB in 2000 leaves shaped like
a transformer's params plus Adam's mu/nu. W3: 10 leaves, 10 KiB in all.
W5: a LoRA fine-tune, a 1 GiB frozen bfloat16 base plus 8 MiB of float32
adapters and their Adam mu/nu. ``scale`` multiplies the bytes (the leaf
counts stay). Leaves are ``jax.Array`` on the default device, filled with
seeded random values so that no layer below can cheat on zero pages.

``vary`` gives the tree of the next save: fresh arrays with every byte
changed (W1-W3: a checkpointer that shares unchanged bytes must not be
flattered by saving the same tree again), or, for W5, new adapters and
moments beside the very same base arrays.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MiB = 1 << 20


def _random(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    data = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        data *= np.float32(scale)
    return jnp.asarray(data)


def w1(scale: float = 1.0) -> dict:
    """16 float32 matrices of 32 MiB each (times ``scale``)."""
    rng = np.random.default_rng(1)
    cols = 2048
    rows = max(1, round(32 * MiB * scale / (cols * 4)))
    return {f"w{i:02d}": _random(rng, (rows, cols)) for i in range(16)}


def _transformer_shapes(d: int, vocab: int, layers: int) -> dict:
    """Parameter shapes of a pre-LN transformer with untied embeddings: 666
    leaves for 41 layers (16 per layer, 10 outside)."""
    ffn = 4 * d

    def dense(n_in: int, n_out: int) -> dict:
        return {"kernel": (n_in, n_out), "bias": (n_out,)}

    def norm() -> dict:
        return {"scale": (d,), "bias": (d,)}

    tree: dict[str, Any] = {"embed": {"embedding": (vocab, d)},
                            "pos_embed": {"embedding": (512, d)}}
    for i in range(layers):
        tree[f"layers_{i}"] = {
            "ln_attn": norm(),
            "attn": {name: dense(d, d) for name in ("query", "key", "value", "out")},
            "ln_mlp": norm(),
            "mlp": {"up": dense(d, ffn), "down": dense(ffn, d)},
        }
    tree["ln_final"] = norm()
    tree["pooler"] = dense(d, d)
    tree["lm_head"] = dense(d, vocab)
    tree["value_head"] = dense(d, 1)
    return tree


def _count(shapes: Any) -> int:
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in leaves)


def w2(scale: float = 1.0) -> dict:
    """A transformer's params + Adam state: 3 x 666 float32 leaves + 2 int32
    counters = 2000 leaves, 256 MiB (times ``scale``).

    The width shrinks with sqrt(scale); the vocabulary takes up the rest of
    the byte budget, so the embeddings and LM head are the large leaves, as
    in real models.
    """
    layers = 41
    d = max(8, int(round(192 * math.sqrt(scale) / 8)) * 8)
    budget = int(256 * MiB * scale / 4 / 3)  # float32 elements per copy
    fixed = _count(_transformer_shapes(d, 0, layers))
    vocab = max(1, (budget - fixed) // (2 * d + 1))
    shapes = _transformer_shapes(d, vocab, layers)
    rng = np.random.default_rng(2)
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    params = jax.tree.map(lambda s: _random(rng, s, 0.02), shapes, is_leaf=is_shape)
    mu = jax.tree.map(lambda s: _random(rng, s, 1e-3), shapes, is_leaf=is_shape)
    nu = jax.tree.map(lambda s: jnp.abs(_random(rng, s, 1e-6)), shapes, is_leaf=is_shape)
    return {
        "params": params,
        "opt_state": {"count": jnp.asarray(1000, jnp.int32), "mu": mu, "nu": nu},
        "step": jnp.asarray(1000, jnp.int32),
    }


def w3(scale: float = 1.0) -> dict:
    """10 float32 vectors of 1 KiB each (times ``scale``)."""
    rng = np.random.default_rng(3)
    n = max(1, round(256 * scale))
    return {f"v{i}": _random(rng, (n,)) for i in range(10)}


W5_LAYERS = 32
W5_RANK = 8


def w5(scale: float = 1.0) -> dict:
    """A LoRA fine-tune: 32 frozen bfloat16 (d, d) kernels, 1 GiB at d = 4096,
    plus rank-8 float32 adapters a (d, 8) and b (8, d) per kernel (8 MiB) and
    Adam's mu and nu of them (8 MiB each). d shrinks with sqrt(scale)."""
    d = max(64, int(round(4096 * math.sqrt(scale) / 64)) * 64)
    rng = np.random.default_rng(5)
    base = {f"layer_{i:02d}": {"kernel": _random(rng, (d, d), 0.02).astype(jnp.bfloat16)}
            for i in range(W5_LAYERS)}

    def adapters(s: float) -> dict:
        return {f"layer_{i:02d}": {"a": _random(rng, (d, W5_RANK), s),
                                   "b": _random(rng, (W5_RANK, d), s)}
                for i in range(W5_LAYERS)}

    return {"base": base, "lora": adapters(0.01),
            "opt_state": {"count": jnp.asarray(0, jnp.int32), "mu": adapters(1e-3),
                          "nu": jax.tree.map(jnp.abs, adapters(1e-6))},
            "step": jnp.asarray(0, jnp.int32)}


BUILDERS = {"W1": w1, "W2": w2, "W3": w3, "W5": w5}

# W5's part that a training step changes; the base is frozen.
W5_CHANGING = ("lora", "opt_state", "step")


def changing(name: str, tree: Any) -> Any:
    """The part of ``tree`` that changes between saves (all of it but W5's base)."""
    if name == "W5":
        return {k: tree[k] for k in W5_CHANGING}
    return tree


@jax.jit
def _bump(x: jax.Array) -> jax.Array:
    # + 1 changes every element of these trees (random floats, small ints).
    return x + jnp.asarray(1, x.dtype)


def vary(name: str, tree: Any) -> Any:
    """The next save's tree: fresh arrays for every changing leaf, every byte
    different; W5's base leaves are returned as the same objects, as a LoRA
    loop that never passes the base through its update does."""
    if name == "W5":
        out = dict(tree)
        out.update(jax.tree.map(_bump, changing(name, tree)))
        return jax.block_until_ready(out)
    return jax.block_until_ready(jax.tree.map(_bump, tree))


def build(name: str, scale: float) -> Any:
    """The tree of workload ``name``, computed and resident."""
    tree = BUILDERS[name](scale)
    return jax.block_until_ready(tree)


def nbytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def abstract(tree: Any) -> Any:
    """The restore target: ShapeDtypeStructs with the leaves' shardings."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def describe(tree: Any) -> str:
    leaves = jax.tree.leaves(tree)
    sizes = sorted(x.nbytes for x in leaves)
    return (f"{nbytes(tree) / MiB:.1f} MiB in {len(leaves)} leaves "
            f"(smallest {sizes[0]} B, median {sizes[len(sizes) // 2]} B, largest "
            f"{sizes[-1] / MiB:.1f} MiB)")
