"""How far two computations of the same numbers may differ: bounds from the arithmetic, not from one CPU.

Two ways of computing the same sums (another kernel or blocking, padded or packed rows, micro-batches
or one batch, one process or two, compiled or eager) add the same terms in another order, and each
order rounds differently. How much depends on the CPU's kernels: an AVX2-only CPU and an AVX512 one
give different roundings of the same float32 matmul. A tolerance read off one machine fails on the
other (a padding-free fit passed on AVX512 and failed on AVX2 by 6e-6 absolute). So every comparison
in the suite takes one of these bounds, each derived from the precision's unit roundoff:

1. **Fits compared step for step** run in float64 (``FLOAT64_FIT``): ``precision="64-true"``
   (``64-true`` on the command line). A few steps of float64 reordering move weights by ~1e-15
   relative (measured 1.1e-15 on AVX2 for padded vs padding-free), a logic error (a mask, a position,
   a normalisation) by 1e-4 or more; 1e-10 sits five orders of magnitude from either.
2. **One forward/backward in float32 (or bf16) against another**: compared norm-wise, the way rounding
   error analysis bounds a matmul (``||fl(AB) - AB|| <= g(n) ||A|| ||B||``, not entry by entry: an
   entry that cancels to ~0 has no relative accuracy in any order). ``reordering_bound`` gives
   ``depth * sqrt(terms) * eps``: the probabilistic growth of a sum of ``terms`` terms rounded in any
   order (Higham & Mary, SIAM J. Sci. Comput. 2019), through ``depth`` dependent operations.
3. **Trained weights after steps in float32** (where float64 cannot run the path): the update
   ``after - before`` compared norm-wise, ``steps`` times a forward/backward's bound.
"""

import math

import torch

# The tiny test models (tests/tiny.py): 2 layers of hidden 32, MLP 64, vocabulary 260, examples of
# up to ~160 tokens, batches of up to ~600 tokens. The longest sum a forward/backward rounds is a
# weight gradient's sum over the batch's tokens; each layer is ~6 dependent products forward and
# as many backward.
TINY_LONGEST_SUM = 1024
TINY_DEPTH = 2 * 2 * 6 + 4  # layers x (forward + backward) x products, + embedding, norm, head, loss

# Rule 1. float64 eps is 2.2e-16; see the module docstring for why 1e-10.
FLOAT64_FIT = {"rtol": 1e-10, "atol": 1e-12}


def reordering_bound(dtype: torch.dtype, terms: int = TINY_LONGEST_SUM, depth: int = TINY_DEPTH) -> float:
    """Norm-wise relative difference two summation orders can give: ``depth * sqrt(terms) * eps``.

    >>> f"{reordering_bound(torch.float32):.1e}"
    '1.1e-04'
    >>> f"{reordering_bound(torch.float64):.1e}"
    '2.0e-13'
    >>> f"{reordering_bound(torch.bfloat16):.1e}"
    '7.0e+00'
    """
    return depth * math.sqrt(terms) * torch.finfo(dtype).eps


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero).

    >>> relative_difference(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0]))
    0.0
    >>> relative_difference(torch.tensor([3.0, 4.5]), torch.tensor([3.0, 4.0]))
    0.1
    """
    actual, expected = actual.detach(), expected.detach()  # parameters may be passed as they are
    difference = (actual.double() - expected.double()).norm()
    scale = expected.double().norm()
    return float(difference / scale) if scale > 0 else float(difference)


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, bound: float, msg: str = "") -> None:
    """``actual`` is ``expected`` within ``bound``, norm-wise relative (rule 2)."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = torch.isfinite(expected)  # masked entries (-inf logits of absent options) must match exactly
    assert torch.equal(actual[~finite], expected[~finite]), f"{msg}: the non-finite entries differ"
    difference = relative_difference(actual[finite], expected[finite])
    assert difference <= bound, f"{msg}: ||actual - expected|| / ||expected|| = {difference:.2e} > {bound:.1e}"


def assert_same_updates(after: dict, expected_after: dict, before: dict, bound: float) -> None:
    """Each weight moved from ``before`` as in ``expected_after``, within ``bound`` norm-wise (rule 3).

    Weights are mostly their initial values: comparing them entry by entry measures the update's
    error against the weight's size, which says nothing. The update is what the steps computed."""
    assert after.keys() == expected_after.keys() and after
    for name, weight in after.items():
        assert_close_normwise(weight - before[name], expected_after[name] - before[name], bound, msg=name)
