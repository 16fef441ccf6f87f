"""The Python examples on docs/variants.md run as written (in order, one namespace)."""
import re
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_variants_page_examples_run_and_say_what_they_claim():
    blocks = python_blocks("variants.md")
    assert len(blocks) >= 3  # noise shapes, DropConnect, variational
    namespace = {}
    exec(compile(blocks[0], "docs/variants.md", "exec"), namespace)  # noqa: S102
    # the claims written in the first block's comments
    y, y2, y3, mask = (namespace[name] for name in ("y", "y2", "y3", "mask"))
    assert mask.shape == (32, 64, 1, 1) and mask.nbytes == 256
    assert np.array_equal(y, y2) and np.array_equal(y, y3)
    for block in blocks[1:]:
        exec(compile(block, "docs/variants.md", "exec"), namespace)  # noqa: S102
    weights = np.random.default_rng(1).standard_normal((256, 784)).astype(np.float32)
    assert np.array_equal(namespace["W"], weights)  # dropconnect left W as the page made it
    dropped = namespace["W_dropped"]
    assert np.array_equal(dropped, np.where(dropped != 0, weights * np.float32(2), 0))
    assert 0.45 < np.count_nonzero(dropped) / dropped.size < 0.55  # p = 0.5 on 200k weights
