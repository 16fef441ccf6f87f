"""fastdrop.nn modules and optimisers: layout, modes, seeding, state, suggest_dropout, and torch."""
import numpy as np
import pytest

import fastdrop
from fastdrop.nn import (
    MLP,
    SGD,
    Adam,
    Dropout,
    Linear,
    ReLU,
    Sequential,
    Tanh,
    Tensor,
    apply_max_norm,
    cross_entropy,
    gradcheck,
    suggest_dropout,
)
from tests.util import require


def data(rows=8, features=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, features)), rng.integers(0, classes, rows)


# -- layers -------------------------------------------------------------------------------


@pytest.mark.parametrize("init, variance", [("he", lambda i, o: 2 / i),
                                             ("glorot", lambda i, o: 2 / (i + o))])
def test_linear_initialisation(init, variance):
    layer = Linear(400, 300, init=init, rng=0)
    assert layer.weight.dtype == np.float32 and layer.weight.shape == (400, 300)
    assert np.all(layer.bias.data == 0)
    assert np.var(layer.weight.data) == pytest.approx(variance(400, 300), rel=0.02)
    with pytest.raises(ValueError, match="init"):
        Linear(3, 2, init="orthogonal")


def test_linear_float64_and_arrays_as_input():
    layer = Linear(3, 2, dtype=np.float64, rng=0)
    out = layer(np.ones((4, 3)))
    assert out.dtype == np.float64 and out.shape == (4, 2)
    assert np.allclose(out.data, np.ones((4, 3)) @ layer.weight.data + layer.bias.data)


def test_gradcheck_through_linear_relu_dropout_linear():
    model = Sequential(Linear(4, 80, dtype=np.float64, rng=0), ReLU(), Dropout(0.5),
                       Linear(80, 3, dtype=np.float64, rng=1))
    drop = model[2]
    X, y = data(6, 4)

    def loss(*parameters):
        drop.generator.state = {"seed": 17, "stream": 0}  # the same mask at every evaluation
        return cross_entropy(model(X), y)

    assert gradcheck(loss, model.parameters())
    assert drop.last_mask is not None and 0 < drop.last_mask.unpack().mean() < 1
    activations = model[1](model[0](X))
    # the path gradcheck went through is the in-place one
    assert np.shares_memory(drop(activations).data, activations.data)


def test_gradcheck_through_tanh_and_recomputed_dropout():
    model = Sequential(Linear(4, 70, init="glorot", dtype=np.float64, rng=0), Tanh(),
                       Dropout(0.3, recompute=True), Linear(70, 2, dtype=np.float64, rng=1))
    X, y = data(5, 4, classes=2)

    def loss(*parameters):
        model[2].generator.state = {"seed": 3, "stream": 5}
        return cross_entropy(model(X), y)

    assert gradcheck(loss, model.parameters())
    assert model[2].last_mask is None  # recompute keeps no mask


def test_dropout_layer_modes_and_streams():
    layer = Dropout(0.5, seed=9)
    x = np.ones((4, 64), np.float32)
    first, second = layer(x), layer(x)
    assert not np.array_equal(first.data, second.data)  # a fresh stream per call
    assert layer.generator.state == {"seed": 9, "stream": 2}
    expected, _ = fastdrop.dropout(x, 0.5, seed=9, stream=1)
    assert np.array_equal(second.data, expected)
    layer.eval()
    assert np.array_equal(layer(x).data, x)
    assert layer.generator.state["stream"] == 2  # evaluation draws nothing


def test_train_eval_and_zero_grad_reach_every_module():
    model = MLP([5, 8, 3], dropout=0.5, seed=0)
    model.eval()
    assert not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())
    X, y = data()
    cross_entropy(model(X), y).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    model.zero_grad()
    assert all(parameter.grad is None for parameter in model.parameters())


def test_reseed_makes_masks_reproducible_and_distinct_per_layer():
    X, _ = data(16, 64)
    model = MLP([64, 64, 64, 3], dropout=[0.5, 0.5, 0.5], seed=1)
    outputs = []
    for _ in range(2):
        model.reseed(42)
        outputs.append(model(X).data)
    assert np.array_equal(*outputs)
    keys = [layer.generator.seed for layer in model if isinstance(layer, Dropout)]
    assert len(set(keys)) == 3
    model.reseed(43)
    assert not np.array_equal(model(X).data, outputs[0])


def test_mlp_layout_and_rates():
    model = MLP([10, 20, 30, 4], dropout=[0.2, 0.0, 0.5], activation="tanh", seed=0)
    assert [type(layer).__name__ for layer in model] == [
        "Dropout", "Linear", "Tanh", "Linear", "Tanh", "Dropout", "Linear"]
    assert MLP([10, 20, 4], dropout=0.4).dropout_rates == [0.0, 0.4]
    assert MLP([784, 1024, 1024, 10], dropout="auto").dropout_rates == [0.2, 0.5, 0.5]
    assert [name for name, _ in MLP([3, 4, 2]).named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="dropout rates"):
        MLP([10, 20, 4], dropout=[0.1])
    with pytest.raises(ValueError, match="activation"):
        MLP([10, 4], activation="sigmoid")
    with pytest.raises(ValueError):
        MLP([10], dropout=0.1)


def test_same_seed_same_initial_weights_with_or_without_dropout():
    with_dropout = MLP([6, 9, 3], dropout=0.5, seed=4).state_dict()
    without = MLP([6, 9, 3], seed=4).state_dict()
    assert all(np.array_equal(a, b) for a, b in zip(with_dropout.values(), without.values()))


def test_state_dict_save_and_load(tmp_path):
    source, target = MLP([5, 7, 3], seed=0), MLP([5, 7, 3], seed=1)
    X, _ = data()
    path = tmp_path / "weights.npz"
    source.save(path)
    target.load(path)
    assert np.array_equal(source.eval()(X).data, target.eval()(X).data)
    state = source.state_dict()
    state["0.weight"][:] = 0  # a copy: the model is unchanged
    assert np.any(source[0].weight.data != 0)
    with pytest.raises(ValueError, match="shape"):
        MLP([5, 8, 3]).load_state_dict(source.state_dict())
    with pytest.raises(KeyError, match="missing"):
        MLP([5, 7, 7, 3]).load_state_dict(source.state_dict())


# -- suggest_dropout ------------------------------------------------------------------------


@pytest.mark.parametrize("sizes, rates", [
    ([784, 1024, 1024, 10], [0.2, 0.5, 0.5]),  # the dropout paper's MNIST net
    ([64, 512, 512, 10], [0.1, 0.35, 0.45]),  # digits, over-parameterised
    ([9216, 4096, 4096, 1000], [0.2, 0.5, 0.7]),  # AlexNet's classifier: last hidden large
    ([784, 2048, 2048, 10], [0.2, 0.5, 0.6]),
    ([20, 32, 2], [0.05, 0.3]),  # small: light everywhere
    ([8, 3], [0.0]),  # no hidden layer: input only, none for 8 features
])
def test_suggest_dropout_examples(sizes, rates):
    assert suggest_dropout(sizes) == rates


@pytest.mark.parametrize("sizes", [[5, 3], [100, 50, 2], [784, 256, 128, 64, 10],
                                   [3000, 8000, 8000, 8000, 100], [16, 16, 16, 16]])
def test_suggest_dropout_follows_the_rule(sizes):
    rates = suggest_dropout(sizes)
    assert len(rates) == len(sizes) - 1  # one per Linear input: never on the output
    assert 0.0 <= rates[0] <= 0.2
    assert all(0.3 <= rate <= 0.5 for rate in rates[1:-1])
    if len(sizes) > 2:
        assert 0.3 <= rates[-1] <= 0.7
    assert all(round(rate * 20) == rate * 20 for rate in rates)


def test_suggest_dropout_grows_with_layer_size():
    widths = [32, 128, 512, 2048, 8192]
    last = [suggest_dropout([100, width, width, 10])[-1] for width in widths]
    assert last == sorted(last) and last[0] < last[-1]


# -- optimisers ------------------------------------------------------------------------------


def test_max_norm_scales_only_long_columns():
    weight = np.array([[3.0, 0.3], [4.0, 0.4]])  # column norms 5 and 0.5
    apply_max_norm(weight, 2.0)
    assert np.allclose(np.linalg.norm(weight, axis=0), [2.0, 0.5])
    assert np.allclose(weight[:, 0], [1.2, 1.6])


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, max_norm=0.5),
                                  lambda p: Adam(p, lr=0.1, max_norm=0.5)])
def test_optimisers_keep_weights_in_the_max_norm_ball(make):
    model = MLP([5, 16, 3], seed=0)
    optimizer = make(model.parameters())
    X, y = data()
    for _ in range(3):
        optimizer.zero_grad()
        cross_entropy(model(X), y).backward()
        optimizer.step()
    for layer in (model[0], model[2]):
        assert np.all(np.linalg.norm(layer.weight.data, axis=0) <= 0.5 * (1 + 1e-6))


def test_fresh_copies_settings_not_state():
    model = MLP([5, 4, 3], seed=0)
    optimizer = SGD(model.parameters(), lr=0.3, momentum=0.5, weight_decay=0.1)
    optimizer.velocities[0][:] = 1.0
    copy = optimizer.fresh()
    assert (copy.lr, copy.momentum, copy.weight_decay) == (0.3, 0.5, 0.1)
    assert copy.parameters == optimizer.parameters and not np.any(copy.velocities[0])


# -- against torch ---------------------------------------------------------------------------


def torch_twin(model, torch):
    """The torch Sequential with the same weights (Linear stores (out, in))."""
    layers = []
    for layer in model:
        if isinstance(layer, Linear):
            twin = torch.nn.Linear(*layer.weight.shape, dtype=torch.float64)
            with torch.no_grad():
                twin.weight.copy_(torch.from_numpy(layer.weight.data.T.astype(np.float64)))
                twin.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float64)))
            layers.append(twin)
        elif isinstance(layer, ReLU):
            layers.append(torch.nn.ReLU())
        elif isinstance(layer, Tanh):
            layers.append(torch.nn.Tanh())
    return layers


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_forward_backward_matches_torch(activation):
    torch = require("torch", "torch")
    model = MLP([6, 32, 16, 4], activation=activation, dtype=np.float64, seed=0)
    X, y = data(10, 6, classes=4)
    loss = cross_entropy(model(X), y)
    loss.backward()
    twin = torch.nn.Sequential(*torch_twin(model, torch))
    twin_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)), torch.from_numpy(y))
    twin_loss.backward()
    assert loss.item() == pytest.approx(twin_loss.item(), rel=1e-12)
    linears = [layer for layer in model if isinstance(layer, Linear)]
    twins = [layer for layer in twin if isinstance(layer, torch.nn.Linear)]
    for ours, theirs in zip(linears, twins):
        assert np.allclose(ours.weight.grad, theirs.weight.grad.numpy().T, rtol=1e-10, atol=1e-13)
        assert np.allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_cross_entropy_matches_torch(dtype, tolerance):
    torch = require("torch", "torch")
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((16, 7)) * np.array([1, 10, 100, 1, 1, 1, 1])).astype(dtype)
    labels = rng.integers(0, 7, 16)
    ours = Tensor(logits, requires_grad=True)
    loss = cross_entropy(ours, labels)
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    twin_loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(labels))
    twin_loss.backward()
    assert loss.dtype == dtype and ours.grad.dtype == dtype
    assert np.isclose(loss.item(), twin_loss.item(), rtol=tolerance)
    assert np.allclose(ours.grad, theirs.grad.numpy(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("recompute", [False, True])
def test_dropout_mlp_matches_torch_with_fastdrops_masks(recompute):
    torch = require("torch", "torch")
    model = MLP([6, 96, 80, 3], dropout=[0.2, 0.5, 0.5], recompute=recompute, dtype=np.float64,
                seed=0)
    X, y = data(12, 6)
    model.reseed(7)
    loss = cross_entropy(model(X), y)
    loss.backward()
    # Replay in torch: each Dropout becomes x * keep / (1 - p) with the bits fastdrop used.
    model.reseed(7)
    twins = iter(torch_twin(model, torch))
    value = torch.from_numpy(X)
    linear_pairs = []
    for layer in model:
        if isinstance(layer, Dropout):
            seed, stream = layer.generator.reserve_stream()
            keep = fastdrop.bernoulli_mask(value.numel(), layer.p, seed=seed, stream=stream)
            keep = torch.from_numpy(fastdrop.unpack_mask(keep, value.numel()).reshape(value.shape))
            value = value * keep / (1 - layer.p)
        else:
            twin = next(twins)
            value = twin(value)
            if isinstance(layer, Linear):
                linear_pairs.append((layer, twin))
    twin_loss = torch.nn.functional.cross_entropy(value, torch.from_numpy(y))
    twin_loss.backward()
    assert loss.item() == pytest.approx(twin_loss.item(), rel=1e-12)
    for ours, theirs in linear_pairs:
        assert np.allclose(ours.weight.grad, theirs.weight.grad.numpy().T, rtol=1e-10, atol=1e-13)
        assert np.allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimiser_steps_match_torch(name):
    torch = require("torch", "torch")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((4, 3))
    ours = Tensor(start.copy(), requires_grad=True)
    theirs = torch.tensor(start.copy(), requires_grad=True)
    if name == "sgd":
        optimizer = SGD([ours], lr=0.1, momentum=0.9, weight_decay=0.01)
        twin = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        optimizer = Adam([ours], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
        twin = torch.optim.Adam([theirs], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for step in range(4):
        grad = rng.standard_normal((4, 3))
        ours.grad = grad.copy()
        theirs.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        twin.step()
        assert np.allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-14), step


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, fastdrop; eager = 'fastdrop.nn' in sys.modules; "
            "import fastdrop.nn; from fastdrop.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('numba', 'torch', 'sklearn', 'matplotlib', 'tqdm', 'scipy') "
            "if m in sys.modules]; print(eager, heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False []"


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_dropout_layer_gives_the_same_output_and_gradient_on_every_backend(backend):
    results = []
    for chosen in ("auto", backend):
        x = Tensor(np.linspace(-1, 1, 3 * 70).reshape(3, 70), requires_grad=True)
        layer = Dropout(0.4, seed=5, backend=chosen)
        out = layer(x)
        (out * out).sum().backward()
        results.append((out.data, x.grad))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
