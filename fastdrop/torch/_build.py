"""The C++ per-call path: built on first use against the installed torch, cached per torch version.

fastdrop's wheel builds without torch, so its C++ operators (``csrc/ops.cpp``, calling
the kernels of ``fastdrop/include``) are compiled on the user's machine by
``torch.utils.cpp_extension`` against whatever torch is installed, the first time an
eager call needs them or ahead of time with ``fastdrop build-torch-ops`` (``python -m
fastdrop.torch.build``). The library is cached under
``$XDG_CACHE_HOME/fastdrop/torch_ops/<torch version>-<python>-<hash>`` (``~/.cache``
by default, ``FASTDROP_CACHE_DIR`` overrides the root): one build per torch version,
Python version and source, shared by every process; a file lock makes concurrent first
uses build it once. ``FASTDROP_TORCH_CPP=0`` keeps the Python path. If the build fails
(no C++ compiler, no ninja) the Python path is used, with a one-line notice on stderr, and
later processes use it without trying again until the build command is run.
"""
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import fastdrop

ENV_SWITCH = "FASTDROP_TORCH_CPP"
ENV_CACHE = "FASTDROP_CACHE_DIR"
MODULE = "fastdrop_torch_ops"
SOURCE = Path(__file__).resolve().parent / "csrc" / "ops.cpp"
# as setup.py builds the Cython kernels: no fused multiply-add (NumPy's rounding), never
# -march=native (the kernels pick their instruction set at run time); -fopenmp because
# at::parallel_for is a header template whose OpenMP pragma is compiled here (without it
# every call runs on one thread), its runtime calls resolved by torch's own libgomp
CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp")
_FAILED = "build-failed.txt"

_state = {"reason": None}  # why the Python path is taken


def _header_dir():
    return Path(fastdrop.get_include())


def torch_version():
    """The installed torch's version, read without importing it."""
    return importlib.metadata.version("torch")


def cache_key():
    """``<torch version>-<python tag>-<hash of the sources and flags>``: one build each."""
    digest = hashlib.sha256()
    for path in [SOURCE, *sorted(_header_dir().glob("fastdrop/*.h"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    python = sys.implementation.cache_tag
    return f"{torch_version()}-{python}-{digest.hexdigest()[:16]}"


def cache_root():
    """Where builds live: FASTDROP_CACHE_DIR, $XDG_CACHE_HOME/fastdrop or ~/.cache/fastdrop."""
    configured = os.environ.get(ENV_CACHE, "").strip()
    if configured:
        return Path(configured) / "torch_ops"
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "fastdrop" / "torch_ops"


def build_dir():
    """The build folder of the installed torch and these sources."""
    return cache_root() / cache_key()


def library_path():
    """The compiled library's path (it exists once built)."""
    return build_dir() / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))


def switched_off():
    """Whether FASTDROP_TORCH_CPP turns the C++ path off (0, false, no, off)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


@contextlib.contextmanager
def _locked(folder):
    """An exclusive lock on ``folder``'s lock file, so concurrent processes build once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / (folder.name + ".lock"), "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock here (Windows): build unlocked
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(force=False, quiet=False, retry=False):
    """Compile the C++ operators for the installed torch, unless already built; return the path.

    Parameters
    ----------
    force : bool, default False
        Build again even if a library is cached.
    quiet : bool, default False
        No progress line on stderr.
    retry : bool, default False
        Try again where a failed attempt is cached (first uses do not: they take the
        Python path at once).

    Returns
    -------
    pathlib.Path
        The compiled library.

    Raises
    ------
    Exception
        Whatever the compiler or ``torch.utils.cpp_extension`` raises (it is recorded, so
        first uses in later processes fall back to the Python path without trying again).
    """
    folder, library = build_dir(), library_path()
    with _locked(folder):
        if library.exists() and not force:
            return library
        failed = folder / _FAILED
        if failed.exists() and not (force or retry):
            raise RuntimeError(failed.read_text().strip())
        if not quiet:
            print(f"fastdrop: compiling the C++ torch ops for torch {torch_version()} "
                  "(once, ~1 min) ...", file=sys.stderr, flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        failed.unlink(missing_ok=True)
        try:
            _compile(folder, library)
        except BaseException as error:
            with open(folder / "build.log", "a") as log:
                log.write(f"\n{type(error).__name__}: {error}\n")
            failed.write_text(f"{type(error).__name__}: {short_reason(error)} "
                              f"(log: {folder / 'build.log'})\n")
            raise
    return library


@contextlib.contextmanager
def _output_to(log):
    """The process's stdout and stderr (file descriptors 1 and 2) into ``log`` in the block.

    The compiler's and torch's messages go to the build log, not between the user's lines.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "w") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for descriptor, original in zip((1, 2), saved):
            os.dup2(original, descriptor)
            os.close(original)


def short_reason(error):
    """An error in one short line, cut at 160 characters.

    A failed compile's message starts with the commands run: the compiler's (or the
    shell's) first complaint says more.
    """
    lines = str(error).strip().splitlines() or [type(error).__name__]
    line = next((text for text in lines[1:]
                 if re.search(r"error|not found|no such file", text, re.IGNORECASE)), lines[0])
    return line if len(line) <= 160 else line[:157] + "..."


def _compile(folder, library):
    """torch.utils.cpp_extension's build, in a scratch folder, moved into place at the end.

    Its output goes to ``build.log`` in the folder.
    """
    from torch.utils import cpp_extension

    with tempfile.TemporaryDirectory(dir=folder) as scratch, _output_to(folder / "build.log"):
        # load imports the module, which registers the operators: a second copy of the
        # library in this process would register them again, a fatal error, so it is kept
        sys.modules[MODULE] = cpp_extension.load(name=MODULE, sources=[str(SOURCE)],
                           extra_include_paths=[str(_header_dir())], extra_cflags=list(CFLAGS),
                           build_directory=scratch, is_python_module=True, verbose=False)
        built = next(Path(scratch).glob(MODULE + ".[ps][oy]*"))  # .so, or .pyd on Windows
        shutil.copy2(built, str(library) + ".partial")
        os.replace(str(library) + ".partial", library)


def _import(library):
    """The compiled module (its import registers the ``fastdrop_cpp`` operators), with fakes.

    Imported once per process (the build's own import counts).
    """
    module = sys.modules.get(MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(MODULE, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[MODULE] = module
    if not getattr(module, "_fakes_registered", False):
        _register_fakes()
        module._fakes_registered = True
    return module


def _register_fakes():
    """Shape rules for tracing (compile, export, fake tensors): a result like the input."""
    import torch

    from ._tensors import word_count

    def like_first(tensor, *_unused, **_options):
        return torch.empty_like(tensor)

    def itself(tensor, *_unused, **_options):
        return tensor

    def result_and_words(tensor, p, seed, stream, keep_words, threads=0, shared_dims=(),
                         alpha=False):
        words = word_count(tensor.shape, tuple(shared_dims)) if keep_words else 0
        return torch.empty_like(tensor), tensor.new_empty(words, dtype=torch.int64)

    for name in ("dropout", "dropout_backward", "dropout_backward_recompute"):
        torch.library.register_fake(f"fastdrop_cpp::{name}")(like_first)
    torch.library.register_fake("fastdrop_cpp::dropout_")(itself)
    _register_compiled_ops()
    for name in ("dropout_backward_", "dropout_backward_recompute_"):  # in place, no result
        torch.library.register_fake(f"fastdrop_cpp::{name}")(lambda *_unused, **_options: None)
    torch.library.register_fake("fastdrop_cpp::dropout_keyed")(result_and_words)


def _register_compiled_ops():
    """Shape rules and gradients of the operators compiled graphs call (`_ops.traced_dropout`).

    ``dropout_of_key`` keeps its input for backward (handed to the backward, not read):
    the partitioner then keeps that tensor rather than, after a ReLU, a bool mask
    (docs/development/compiled.md). Its backward is linear in the gradient: its own
    gradient.
    """
    import torch

    from ._tensors import word_count

    cpp = torch.ops.fastdrop_cpp
    torch.library.register_fake("fastdrop_cpp::draw_key")(
        lambda like: like.new_empty(2, dtype=torch.int64))

    @torch.library.register_fake("fastdrop_cpp::dropout_of_key")
    def _(x, p, key, threads, shared_dims, alpha):
        count = torch.sym_max(2, word_count(x.shape, tuple(shared_dims)))
        return torch.empty_like(x), x.new_empty(count, dtype=torch.int64)

    torch.library.register_fake("fastdrop_cpp::dropout_backward_of_words")(
        lambda grad, *_unused: torch.empty_like(grad))

    def save_forward(ctx, inputs, output):
        x, ctx.p, _, ctx.threads, ctx.shared_dims, ctx.alpha = inputs
        ctx.save_for_backward(output[1], x)

    def save_backward(ctx, inputs, output):
        _, words, ctx.p, ctx.threads, ctx.shared_dims, ctx.alpha, _ = inputs
        ctx.save_for_backward(words, None)

    def gradient(ctx, grad, *_unused):
        words, x = ctx.saved_tensors
        result = cpp.dropout_backward_of_words(grad, words, ctx.p, ctx.threads,
                                               ctx.shared_dims, ctx.alpha, x)
        return (result,) + (None,) * (len(ctx.needs_input_grad) - 1)

    torch.library.register_autograd("fastdrop_cpp::dropout_of_key", gradient,
                                    setup_context=save_forward)
    torch.library.register_autograd("fastdrop_cpp::dropout_backward_of_words", gradient,
                                    setup_context=save_backward)


UNLOADED = "unloaded"
# The C++ path's entry (fastdrop_torch_ops.dropout) while that path is on, None on the
# Python path, UNLOADED until the first call that could take it (`first_use`).
eager = UNLOADED


def first_use():
    """`eager` after loading the C++ path (building it if need be) on the first call."""
    global eager
    if eager is UNLOADED:
        import torch

        if torch.compiler.is_compiling():  # traced calls take the operators: no build, no break
            return None
    return load()


def load():
    """`first_use`, loading the C++ path even while a graph is being compiled.

    For calls Dynamo runs rather than traces (``torch.compiler.assume_constant_result``):
    a compiled graph's operators then come from this path.
    """
    global eager
    if eager is UNLOADED:
        module = _load()
        eager = None if module is None else module.dropout
    return eager


def ops():
    """The compiled module while the C++ path is on (loaded on first use), else None."""
    return None if first_use() is None else sys.modules[MODULE]


def _load():
    """The compiled module, or None (FASTDROP_TORCH_CPP=0, or a failed build: one notice)."""
    if switched_off():
        _state["reason"] = f"{ENV_SWITCH}=0"
        return None
    try:
        return _import(build())
    except Exception as error:  # never an error: the Python path does the same work
        _state["reason"] = f"the C++ build failed: {short_reason(error)}"
        print(f"fastdrop: using the Python path of fastdrop.torch ({_state['reason']}; "
              "retry with `fastdrop build-torch-ops`)", file=sys.stderr, flush=True)
        return None


@contextlib.contextmanager
def path(name):
    """Force the eager path in a with-block: ``"cpp"`` or ``"python"`` (the tests use both).

    ``"cpp"`` loads (or builds) the C++ operators and raises if they cannot be had.
    """
    global eager
    if name not in ("cpp", "python"):
        raise ValueError(f"path must be 'cpp' or 'python', got {name!r}")
    entry = None
    if name == "cpp":
        module = sys.modules.get(MODULE) or _import(build())
        entry = module.dropout
    before, eager = eager, entry
    try:
        yield
    finally:
        eager = before


def describe():
    """One line saying which eager path fastdrop.torch takes (for ``fastdrop info``)."""
    if eager is not UNLOADED:
        if eager is not None:
            return f"C++ (built for torch {torch_version()})"
        return f"Python ({_state['reason'] or 'chosen'})"
    if switched_off():
        return f"Python ({ENV_SWITCH}=0)"
    if library_path().exists():
        return f"C++ (built for torch {torch_version()}: {build_dir()})"
    failed = build_dir() / _FAILED
    if failed.exists():
        return f"Python (the C++ build failed: {failed.read_text().strip()})"
    return ("Python until the first call builds the C++ ops "
            "(or now: fastdrop build-torch-ops)")
