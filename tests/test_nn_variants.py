"""fastdrop.nn dropout variants: ops and layers gradchecked and checked against fastdrop."""

import numpy as np
import pytest

import fastdrop
from fastdrop import nn
from fastdrop.maskstream.spec import alpha_dropout_constants
from fastdrop.nn import Tensor, gradcheck
from tests.util import ALL_BACKENDS, bits

backends = pytest.mark.parametrize("backend", ALL_BACKENDS)


def signed(*shape, seed=0):
    """Values with |v| in [0.2, 1.5]: away from relu's kink and from 0."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


# -- graph ops: gradcheck -------------------------------------------------------------------

# name -> (f(backend) -> function of the inputs, inputs). Every op that `_result` records
# must have a case here or in tests/test_nn_engine.py (its test_every_op_has_a_case).
OP_CASES = {
    "dropout channel noise shape": (
        lambda b: lambda a: nn.dropout(a, 0.4, seed=7, stream=2, noise_shape=(2, 3, 1, 1),
                                       backend=b)[0],
        [signed(2, 3, 1, 2)]),
    "dropout channel noise shape recompute": (
        lambda b: lambda a: nn.dropout(a, 0.4, seed=7, stream=2, noise_shape=(2, 3, 1, 1),
                                       recompute=True, backend=b)[0],
        [signed(2, 3, 1, 2)]),
    "dropout time noise shape with offset": (
        lambda b: lambda a: nn.dropout(a, 0.5, seed=3, stream=1, offset=13,
                                       noise_shape=(2, 1, 3), backend=b)[0],
        [signed(2, 2, 3)]),
    "alpha_dropout": (
        lambda b: lambda a: nn.alpha_dropout(a, 0.3, seed=7, stream=2, backend=b)[0],
        [signed(2, 6)]),
    "alpha_dropout recompute with offset": (
        lambda b: lambda a: nn.alpha_dropout(a, 0.6, seed=5, stream=4, offset=50,
                                             recompute=True, backend=b)[0],
        [signed(16)]),
    "alpha_dropout channel noise shape": (
        lambda b: lambda a: nn.alpha_dropout(a, 0.5, seed=2, stream=0, noise_shape=(2, 3, 1),
                                             backend=b)[0],
        [signed(2, 3, 2)]),
    "alpha_dropout in place after relu": (
        lambda b: lambda a, w: nn.alpha_dropout((a @ w).relu(), 0.5, seed=11, stream=0,
                                                backend=b)[0].sum(axis=0),
        [signed(2, 3), signed(3, 6, seed=1)]),
    "gaussian_dropout": (
        lambda b: lambda a: nn.gaussian_dropout(a, 0.4, seed=7, stream=2, backend=b)[0],
        [signed(2, 6)]),
    "gaussian_dropout with offset": (
        lambda b: lambda a: nn.gaussian_dropout(a, 0.2, seed=1, stream=9, offset=101,
                                                backend=b)[0],
        [signed(12)]),
    "gaussian_dropout in place after relu": (
        lambda b: lambda a, w: nn.gaussian_dropout((a @ w).relu(), 0.5, seed=11, stream=0,
                                                   backend=b)[0].sum(axis=0),
        [signed(2, 3), signed(3, 6, seed=1)]),
    "dropconnect_linear": (
        lambda b: lambda x, w, c: nn.dropconnect_linear(x, w, c, 0.5, seed=4, stream=3,
                                                        backend=b)[0],
        [signed(3, 4), signed(4, 3, seed=1), signed(3, seed=2)]),
    "dropconnect_linear recompute": (
        lambda b: lambda x, w, c: nn.dropconnect_linear(x, w, c, 0.3, seed=4, stream=3,
                                                        recompute=True, backend=b)[0],
        [signed(3, 4), signed(4, 3, seed=1), signed(3, seed=2)]),
    "dropconnect_linear without bias, offset": (
        lambda b: lambda x, w: nn.dropconnect_linear(x, w, None, 0.6, seed=8, stream=0,
                                                     offset=70, backend=b)[0],
        [signed(2, 4), signed(4, 3, seed=1)]),
}


@backends
@pytest.mark.parametrize("name", OP_CASES)
def test_gradcheck_every_variant_op(name, backend):
    make, inputs = OP_CASES[name]
    assert gradcheck(make(backend), inputs)
    if "gaussian" not in name:  # the case has dropped and kept elements
        tensors = [Tensor(value, requires_grad=True) for value in inputs]
        make(backend)(*tensors).sum().backward()
        assert any(np.any(t.grad == 0) and np.any(t.grad != 0) for t in tensors)


@backends
def test_variant_ops_match_fastdrop(backend):
    data = signed(6, 40).astype(np.float32)
    y, mask = nn.alpha_dropout(Tensor(data), 0.25, seed=4, stream=3, backend=backend)
    expected, expected_mask = fastdrop.alpha_dropout(data, 0.25, seed=4, stream=3,
                                                     backend="numpy")
    assert np.array_equal(bits(y.data), bits(expected))
    assert np.array_equal(mask.words, expected_mask.words)
    y, noise = nn.gaussian_dropout(Tensor(data), 0.25, seed=4, stream=3, offset=5,
                                   backend=backend)
    expected, _ = fastdrop.gaussian_dropout(data, 0.25, seed=4, stream=3, offset=5,
                                            backend="numpy")
    assert np.array_equal(bits(y.data), bits(expected))
    assert (noise.seed, noise.stream, noise.offset, noise.p) == (4, 3, 5, 0.25)
    y, mask = nn.dropout(Tensor(data.reshape(6, 4, 10)), 0.5, seed=1, stream=2,
                         noise_shape=(6, 1, 10), backend=backend)
    expected, expected_mask = fastdrop.dropout(data.reshape(6, 4, 10), 0.5, seed=1, stream=2,
                                               noise_shape=(6, 1, 10), backend="numpy")
    assert mask.shape == (6, 1, 10) and np.array_equal(mask.words, expected_mask.words)
    assert np.array_equal(bits(y.data), bits(expected))
    for op in (nn.alpha_dropout, nn.gaussian_dropout):
        same, nothing = op(Tensor(data), 0.25, seed=4, stream=3, training=False, backend=backend)
        assert same.data is data and nothing is None


@backends
def test_dropconnect_linear_op_matches_fastdrop_dropconnect(backend):
    x, weight, bias = (signed(5, 6).astype(np.float32), signed(6, 4, seed=1).astype(np.float32),
                       signed(4, seed=2).astype(np.float32))
    y, mask = nn.dropconnect_linear(Tensor(x), Tensor(weight), Tensor(bias), 0.5, seed=9,
                                    stream=1, backend=backend)
    dropped, expected_mask = fastdrop.dropconnect(weight, 0.5, seed=9, stream=1, backend="numpy")
    assert mask.shape == weight.shape and np.array_equal(mask.words, expected_mask.words)
    assert np.array_equal(bits(y.data), bits(x @ dropped + bias))
    full, no_mask = nn.dropconnect_linear(Tensor(x), Tensor(weight), Tensor(bias), 0.5, seed=9,
                                          stream=1, training=False, backend=backend)
    assert no_mask is None and np.array_equal(full.data, x @ weight + bias)
    with pytest.raises(ValueError, match=r"\(5, 6\) and \(4, 6\)"):
        nn.dropconnect_linear(Tensor(x), Tensor(weight.T), None, 0.5, seed=9, stream=1,
                              backend=backend)


@backends
def test_alpha_and_gaussian_ops_overwrite_only_what_is_safe(backend):
    for op in (nn.alpha_dropout, nn.gaussian_dropout):
        h = (Tensor(signed(4, 3)) @ Tensor(signed(3, 64, seed=1), requires_grad=True)).relu()
        y, _ = op(h, 0.5, seed=1, stream=0, backend=backend)
        assert np.shares_memory(y.data, h.data)
        with pytest.raises(RuntimeError, match="overwritten"):
            h + 1.0
        leaf = signed(4, 64)
        before = leaf.copy()
        op(Tensor(leaf, requires_grad=True), 0.5, seed=1, stream=0, backend=backend)
        assert np.array_equal(leaf, before)


# -- layers: gradcheck ----------------------------------------------------------------------


def fixed(layer, seed=17, stream=3):
    """f(x) = layer(x) with the same (seed, stream) at every evaluation."""
    def f(x):
        layer.generator.state = {"seed": seed, "stream": stream}
        return layer(x)
    return f


# name -> (make(backend) -> layer, input shape)
LAYER_CASES = {
    "Dropout broadcast_dims": (lambda b: nn.Dropout(0.5, broadcast_dims=(2, 3), backend=b),
                               (2, 3, 1, 2)),
    "ChannelDropout": (lambda b: nn.ChannelDropout(0.5, backend=b), (2, 3, 2)),
    "ChannelDropout channels last": (
        lambda b: nn.ChannelDropout(0.5, channel_axis=-1, backend=b), (2, 1, 2, 3)),
    "ChannelDropout unbatched recompute": (
        lambda b: nn.ChannelDropout(0.4, batch_axis=None, recompute=True, backend=b), (6, 2)),
    "Dropout1d": (lambda b: nn.Dropout1d(0.5, backend=b), (2, 3, 2)),
    "Dropout1d unbatched": (lambda b: nn.Dropout1d(0.5, backend=b), (6, 2)),
    "Dropout2d": (lambda b: nn.Dropout2d(0.5, backend=b), (2, 3, 1, 2)),
    "Dropout2d unbatched": (lambda b: nn.Dropout2d(0.5, backend=b), (6, 1, 2)),
    "Dropout3d": (lambda b: nn.Dropout3d(0.5, backend=b), (2, 3, 1, 1, 2)),
    "VariationalDropout": (lambda b: nn.VariationalDropout(0.5, backend=b), (2, 2, 3)),
    "VariationalDropout time first recompute": (
        lambda b: nn.VariationalDropout(0.3, batch_first=False, recompute=True, backend=b),
        (2, 2, 3)),
    "AlphaDropout": (lambda b: nn.AlphaDropout(0.3, backend=b), (2, 6)),
    "AlphaDropout recompute": (lambda b: nn.AlphaDropout(0.5, recompute=True, backend=b),
                               (2, 6)),
    "FeatureAlphaDropout": (lambda b: nn.FeatureAlphaDropout(0.5, backend=b), (2, 3, 2)),
    "GaussianDropout": (lambda b: nn.GaussianDropout(0.4, backend=b), (2, 6)),
}


@backends
@pytest.mark.parametrize("name", LAYER_CASES)
def test_gradcheck_every_variant_layer(name, backend):
    make, shape = LAYER_CASES[name]
    layer = make(backend)
    assert gradcheck(fixed(layer), [signed(*shape)])
    record = layer.last_noise if isinstance(layer, nn.GaussianDropout) else layer.last_mask
    assert (record is None) == bool(getattr(layer, "recompute", False))
    if not isinstance(layer, nn.GaussianDropout):  # the case has dropped and kept elements
        x = Tensor(signed(*shape), requires_grad=True)
        fixed(layer)(x).sum().backward()
        assert np.any(x.grad == 0) and np.any(x.grad != 0)


@backends
@pytest.mark.parametrize("recompute", [False, True])
def test_gradcheck_dropconnect_linear_layer(backend, recompute):
    layer = nn.DropConnectLinear(4, 3, 0.5, dtype=np.float64, rng=0, recompute=recompute,
                                 backend=backend)
    layer.bias.data[:] = signed(3, seed=3)
    X = signed(3, 4)

    def f(*parameters):
        layer.generator.state = {"seed": 2, "stream": 1}
        return layer(X)

    assert gradcheck(f, layer.parameters())
    assert gradcheck(fixed(layer, 2, 1), [X])
    assert (layer.last_mask is None) == recompute


def rnn(x, input_to_hidden, hidden_to_hidden, input_drop, state_drop):
    """An Elman RNN over x (N, T, F) with variational dropout on the inputs and the state."""
    x = input_drop(x)
    state_drop.start_sequence()
    h = Tensor(np.zeros((x.shape[0], hidden_to_hidden.weight.shape[0]), x.dtype))
    for t in range(x.shape[1]):
        h = (input_to_hidden(x[:, t]) + hidden_to_hidden(state_drop.step(h))).tanh()
    return h


@backends
def test_gradcheck_rnn_with_variational_dropout(backend):
    input_to_hidden = nn.Linear(3, 3, init="glorot", dtype=np.float64, rng=0)
    hidden_to_hidden = nn.Linear(3, 3, bias=False, init="glorot", dtype=np.float64, rng=1)
    input_drop = nn.VariationalDropout(0.3, backend=backend)
    state_drop = nn.VariationalDropout(0.5, backend=backend)
    model = nn.Sequential(input_to_hidden, hidden_to_hidden, input_drop, state_drop)
    X = signed(2, 2, 3)

    def f(x, *parameters):
        model.reseed(5)  # the same masks at every evaluation
        return rnn(x, input_to_hidden, hidden_to_hidden, input_drop, state_drop)

    # x reaches the loss through input_drop, the recurrent weight through state_drop
    assert gradcheck(f, [X, hidden_to_hidden.weight])
    kept = state_drop.last_mask.unpack()
    assert state_drop.last_mask.shape == (2, 3) and 0 < kept.mean() < 1
    assert 0 < input_drop.last_mask.unpack().mean() < 1


# -- train / eval behaviour -----------------------------------------------------------------

ALL_LAYERS = dict(LAYER_CASES, DropConnectLinear=(
    lambda b: nn.DropConnectLinear(5, 3, 0.5, rng=0, backend=b), (4, 5)))


@backends
@pytest.mark.parametrize("name", ALL_LAYERS)
def test_eval_mode_and_p_zero_are_the_identity(name, backend):
    make, shape = ALL_LAYERS[name]
    x = Tensor(signed(*shape).astype(np.float32))
    layer = make(backend)
    layer.generator.state = {"seed": 1, "stream": 0}
    trained = layer(x)
    assert layer.generator.state["stream"] == 1  # a training call takes one stream
    if name == "DropConnectLinear":
        reference = nn.Linear(5, 3, rng=0)(x).data
        assert not np.array_equal(trained.data, reference)
        assert np.array_equal(layer.eval()(x).data, reference)
        zero = nn.DropConnectLinear(5, 3, 0.0, rng=0, backend=backend)
        assert np.array_equal(zero(x).data, reference)
    else:
        assert not np.array_equal(trained.data, x.data)
        assert layer.eval()(x) is x
        layer.train()
        layer.p = 0.0
        assert layer(x) is x
    assert layer.generator.state["stream"] == 1  # evaluation and p = 0 draw nothing


@backends
def test_each_training_call_takes_the_next_stream(backend):
    layer = nn.ChannelDropout(0.5, seed=9, backend=backend)
    x = np.ones((8, 16, 2, 2), np.float32)
    first, second = layer(x), layer(x)
    assert not np.array_equal(first.data, second.data)
    expected, _ = fastdrop.channel_dropout(x, 0.5, seed=9, stream=1, backend="numpy")
    assert np.array_equal(second.data, expected)


# -- the layer's mask is the fastdrop function's --------------------------------------------

# name -> (make(backend, seed) -> layer, fastdrop function(x, seed, stream), input shape)
SAME_MASK_CASES = {
    "ChannelDropout": (lambda b, s: nn.ChannelDropout(0.3, seed=s, backend=b),
                       lambda x, s, t: fastdrop.channel_dropout(x, 0.3, seed=s, stream=t,
                                                                backend="numpy"),
                       (4, 8, 3, 3)),
    "ChannelDropout channels last": (
        lambda b, s: nn.ChannelDropout(0.3, channel_axis=-1, seed=s, backend=b),
        lambda x, s, t: fastdrop.channel_dropout(x, 0.3, channel_axis=-1, seed=s, stream=t,
                                                 backend="numpy"),
        (4, 3, 3, 8)),
    "Dropout1d": (lambda b, s: nn.Dropout1d(0.5, seed=s, backend=b),
                  lambda x, s, t: fastdrop.channel_dropout(x, 0.5, seed=s, stream=t,
                                                           backend="numpy"),
                  (4, 8, 7)),
    "Dropout2d unbatched": (lambda b, s: nn.Dropout2d(0.5, seed=s, backend=b),
                            lambda x, s, t: fastdrop.channel_dropout(
                                x, 0.5, channel_axis=0, batch_axis=None, seed=s, stream=t,
                                backend="numpy"),
                            (16, 3, 3)),
    "Dropout3d": (lambda b, s: nn.Dropout3d(0.5, seed=s, backend=b),
                  lambda x, s, t: fastdrop.channel_dropout(x, 0.5, seed=s, stream=t,
                                                           backend="numpy"),
                  (2, 8, 2, 3, 2)),
    "VariationalDropout": (lambda b, s: nn.VariationalDropout(0.4, seed=s, backend=b),
                           lambda x, s, t: fastdrop.dropout(x, 0.4, seed=s, stream=t,
                                                            noise_shape=(5, 1, 12),
                                                            backend="numpy"),
                           (5, 6, 12)),
    "Dropout broadcast_dims": (
        lambda b, s: nn.Dropout(0.4, broadcast_dims=0, seed=s, backend=b),
        lambda x, s, t: fastdrop.dropout(x, 0.4, seed=s, stream=t, broadcast_dims=0,
                                         backend="numpy"),
        (5, 70)),
    "AlphaDropout": (lambda b, s: nn.AlphaDropout(0.2, seed=s, backend=b),
                     lambda x, s, t: fastdrop.alpha_dropout(x, 0.2, seed=s, stream=t,
                                                            backend="numpy"),
                     (7, 30)),
    "FeatureAlphaDropout": (lambda b, s: nn.FeatureAlphaDropout(0.5, seed=s, backend=b),
                            lambda x, s, t: fastdrop.feature_alpha_dropout(
                                x, 0.5, seed=s, stream=t, backend="numpy"),
                            (3, 10, 4)),
}


@backends
@pytest.mark.parametrize("name", SAME_MASK_CASES)
def test_layer_mask_is_the_fastdrop_functions(name, backend):
    make, function, shape = SAME_MASK_CASES[name]
    x = signed(*shape).astype(np.float32)
    layer = make(backend, 21)
    layer(x)  # stream 0
    y = layer(x)  # stream 1
    expected, mask = function(x, 21, 1)
    assert (layer.last_mask.seed, layer.last_mask.stream) == (21, 1)
    assert layer.last_mask.shape == mask.shape
    assert np.array_equal(layer.last_mask.words, mask.words)
    assert np.array_equal(bits(y.data), bits(expected))
    assert 0 < mask.unpack().mean() < 1  # a mask that tells dropped from kept


@backends
def test_gaussian_layer_noise_is_the_fastdrop_functions(backend):
    x = signed(6, 50).astype(np.float32)
    layer = nn.GaussianDropout(0.3, seed=21, backend=backend)
    layer(x)
    y = layer(x)
    expected, noise = fastdrop.gaussian_dropout(x, 0.3, seed=21, stream=1, backend="numpy")
    assert np.array_equal(bits(y.data), bits(expected))
    got = layer.last_noise
    assert (got.seed, got.stream, got.offset, got.p, got.shape) == (
        noise.seed, noise.stream, noise.offset, noise.p, noise.shape)
    multipliers = fastdrop.gaussian_noise(x.size, 0.3, seed=21, stream=1, backend="numpy")
    assert np.array_equal(y.data, x * multipliers.reshape(x.shape).astype(np.float32))
    with pytest.raises(ValueError, match="p < 1"):
        nn.GaussianDropout(1.0)


@backends
def test_dropconnect_layer_mask_is_fastdrop_dropconnects(backend):
    layer = nn.DropConnectLinear(9, 7, 0.4, rng=0, seed=21, backend=backend)
    x = signed(3, 9).astype(np.float32)
    layer(x)
    y = layer(x)
    dropped, mask = fastdrop.dropconnect(layer.weight.data, 0.4, seed=21, stream=1,
                                         backend="numpy")
    assert layer.last_mask.shape == (9, 7) and np.array_equal(layer.last_mask.words, mask.words)
    assert np.array_equal(bits(y.data), bits(x @ dropped + layer.bias.data))


# -- recompute: the same gradients, bit for bit ---------------------------------------------


def gradients(layer, x, seed=6, stream=2):
    """x's gradient and the layer's parameter gradients after (y * weights).sum().backward()."""
    layer.generator.state = {"seed": seed, "stream": stream}
    layer.zero_grad()
    x = Tensor(x, requires_grad=True)
    y = layer(x)
    (y * Tensor(signed(*y.shape, seed=9).astype(y.dtype))).sum().backward()
    return [x.grad] + [parameter.grad for parameter in layer.parameters()]


RECOMPUTE_CASES = {
    "ChannelDropout": (lambda b, r: nn.ChannelDropout(0.5, recompute=r, backend=b),
                       (4, 6, 5, 5)),
    "VariationalDropout": (lambda b, r: nn.VariationalDropout(0.5, recompute=r, backend=b),
                           (4, 7, 33)),
    "AlphaDropout": (lambda b, r: nn.AlphaDropout(0.3, recompute=r, backend=b), (9, 50)),
    "FeatureAlphaDropout": (lambda b, r: nn.FeatureAlphaDropout(0.3, recompute=r, backend=b),
                            (4, 6, 5)),
    "DropConnectLinear": (lambda b, r: nn.DropConnectLinear(40, 30, 0.5, rng=0, recompute=r,
                                                            backend=b), (8, 40)),
}


@backends
@pytest.mark.parametrize("name", RECOMPUTE_CASES)
def test_recompute_gives_the_same_gradients_bit_for_bit(name, backend):
    make, shape = RECOMPUTE_CASES[name]
    x = signed(*shape).astype(np.float32)
    stored_layer, recomputed_layer = make(backend, False), make(backend, True)
    stored, recomputed = gradients(stored_layer, x), gradients(recomputed_layer, x)
    assert stored_layer.last_mask is not None and recomputed_layer.last_mask is None
    assert len(stored) == len(recomputed) >= 1
    for a, b in zip(stored, recomputed):
        assert a.dtype == np.float32 and np.array_equal(bits(a), bits(b))
    assert any(np.any(grad == 0) and np.any(grad != 0) for grad in stored)  # something dropped


# -- what each variant drops ----------------------------------------------------------------


@backends
@pytest.mark.parametrize("make, shape, channel_axis", [
    (lambda b: nn.ChannelDropout(0.5, seed=3, backend=b), (6, 8, 4, 4), 1),
    (lambda b: nn.ChannelDropout(0.5, channel_axis=-1, seed=3, backend=b), (6, 4, 4, 8), 3),
    (lambda b: nn.Dropout1d(0.5, seed=3, backend=b), (6, 8, 9), 1),
    (lambda b: nn.Dropout2d(0.5, seed=3, backend=b), (6, 8, 3, 5), 1),
    (lambda b: nn.Dropout3d(0.5, seed=3, backend=b), (6, 8, 2, 3, 2), 1),
])
def test_channel_layers_zero_whole_channels(make, shape, channel_axis, backend):
    x = Tensor(np.random.default_rng(0).uniform(1.0, 2.0, shape), requires_grad=True)
    y = make(backend)(x)
    y.sum().backward()
    per_channel = np.moveaxis(y.data, (0, channel_axis), (0, 1)).reshape(shape[0], 8, -1)
    inputs = np.moveaxis(x.data, (0, channel_axis), (0, 1)).reshape(shape[0], 8, -1)
    dropped = np.all(per_channel == 0, axis=2)
    kept = np.all(per_channel == inputs * 2.0, axis=2)
    assert np.all(dropped | kept)
    assert dropped.any() and kept.any()
    grad = np.moveaxis(x.grad, (0, channel_axis), (0, 1)).reshape(shape[0], 8, -1)
    assert np.all(grad[dropped] == 0) and np.all(grad[kept] == 2.0)


@backends
def test_feature_alpha_dropout_sets_whole_channels(backend):
    x = np.random.default_rng(0).standard_normal((6, 8, 10))
    y = nn.FeatureAlphaDropout(0.5, seed=3, backend=backend)(x).data
    a, b, c = alpha_dropout_constants(0.5)
    dropped = np.all(y == c, axis=2)
    kept = np.all(np.abs(y - (a * x + b)) < 1e-12, axis=2)
    assert np.all(dropped | kept) and dropped.any() and kept.any()


@backends
@pytest.mark.parametrize("batch_first", [True, False])
def test_variational_dropout_drops_the_same_features_at_every_step(batch_first, backend):
    shape = (6, 9, 40) if batch_first else (9, 6, 40)
    time_axis = 1 if batch_first else 0
    layer = nn.VariationalDropout(0.5, batch_first=batch_first, seed=4, backend=backend)
    y = np.moveaxis(layer(np.ones(shape)).data, time_axis, 1)  # (N, T, F)
    assert np.all(y == y[:, :1])  # every step as step 0
    assert np.all((y == 0) | (y == 2.0))
    first_step = y[:, 0]
    assert (first_step == 0).any() and (first_step != 0).any()
    assert not np.all(first_step == first_step[:1])  # each sequence its own mask
    again = np.moveaxis(layer(np.ones(shape)).data, time_axis, 1)
    assert not np.array_equal(again, y)  # each call (batch) a new mask


@backends
def test_variational_step_mode_reuses_the_sequence_mask(backend):
    x = signed(4, 5, 16)
    whole = nn.VariationalDropout(0.5, seed=8, backend=backend)
    stepped = nn.VariationalDropout(0.5, seed=8, backend=backend)
    expected = whole(x).data
    assert stepped.start_sequence() == (8, 0)
    steps = [stepped.step(x[:, t]).data for t in range(5)]
    assert np.array_equal(bits(np.stack(steps, axis=1)), bits(expected))
    stepped.start_sequence()
    assert not np.array_equal(stepped.step(x[:, 0]).data, steps[0])  # a new sequence
    with pytest.raises(RuntimeError, match="start_sequence"):
        nn.VariationalDropout(0.5, backend=backend).step(x[:, 0])
    evaluating = nn.VariationalDropout(0.5, seed=8, backend=backend).eval()
    step = Tensor(x[:, 0])
    assert evaluating.start_sequence() is None and evaluating.step(step) is step
    assert evaluating.generator.state["stream"] == 0  # evaluation draws nothing


# -- DropConnectLinear against Linear --------------------------------------------------------


@backends
def test_dropconnect_linear_in_eval_mode_is_linear(backend):
    for kwargs in ({}, {"bias": False, "init": "glorot", "dtype": np.float64}):
        layer = nn.DropConnectLinear(12, 5, 0.5, rng=3, backend=backend, **kwargs)
        linear = nn.Linear(12, 5, rng=3, **kwargs)
        names = [name for name, _ in layer.named_parameters()]
        assert names == [name for name, _ in linear.named_parameters()]
        for (_, a), (_, b) in zip(layer.named_parameters(), linear.named_parameters()):
            assert np.array_equal(a.data, b.data) and a.dtype == b.dtype
        x = signed(7, 12)
        assert np.array_equal(bits(layer.eval()(x).data), bits(linear(x).data))
        assert not np.array_equal(layer.train()(x).data, linear(x).data)


@backends
def test_dropconnect_drops_weights_not_inputs(backend):
    layer = nn.DropConnectLinear(30, 20, 0.5, rng=0, seed=1, backend=backend, dtype=np.float64)
    x = Tensor(signed(4, 30), requires_grad=True)
    layer(x).sum().backward()
    keep = layer.last_mask.unpack()
    assert keep.shape == (30, 20) and 0.3 < keep.mean() < 0.7
    assert np.all(layer.weight.grad[~keep] == 0)  # dropped weights get no gradient
    assert np.allclose(layer.weight.grad[keep], np.repeat(x.data.sum(0)[:, None], 20, 1)[keep]
                       * 2.0)
    assert np.allclose(x.grad, (layer.weight.data * keep * 2.0).sum(axis=1)[None].repeat(4, 0))


# -- shapes each layer accepts ---------------------------------------------------------------


@backends
@pytest.mark.parametrize("layer, shape, expected", [
    (nn.Dropout2d, (3, 4), (r"Dropout2d expects a 4-d input \(N, C, H, W\) or a 3-d unbatched "
                            r"input \(C, H, W\), got an input of shape \(3, 4\) \(2-d\)")),
    (nn.Dropout2d, (2, 3, 4, 4, 4), r"Dropout2d expects .* shape \(2, 3, 4, 4, 4\)"),
    (nn.Dropout1d, (2, 3, 4, 4), r"Dropout1d expects a 3-d input \(N, C, L\) .*\(2, 3, 4, 4\)"),
    (nn.Dropout3d, (2, 3, 4), r"Dropout3d expects a 5-d input .*\(2, 3, 4\)"),
])
def test_channel_layers_reject_inputs_without_their_layout(layer, shape, expected, backend):
    module = layer(0.5, seed=0, backend=backend)
    x = np.ones(shape, np.float32)
    for mode in (True, False):  # the same error in evaluation mode
        with pytest.raises(ValueError, match=expected):
            module.train(mode)(x)
    assert module.generator.state["stream"] == 0  # no stream taken
    assert np.all(x == 1)


@backends
def test_layers_reject_inputs_they_cannot_share_a_mask_over(backend):
    with pytest.raises(ValueError, match=r"channel.*\(8, 4\)"):
        nn.ChannelDropout(0.5, backend=backend)(np.ones((8, 4)))
    with pytest.raises(ValueError, match=r"FeatureAlpha|channel.*\(8, 4\)"):
        nn.FeatureAlphaDropout(0.5, backend=backend)(np.ones((8, 4)))
    with pytest.raises(ValueError, match="time axis"):
        nn.VariationalDropout(0.5, backend=backend)(np.ones(8))
    with pytest.raises(ValueError, match="out of range"):
        nn.ChannelDropout(0.5, channel_axis=3, backend=backend)(np.ones((2, 3, 4)))


# -- seeding --------------------------------------------------------------------------------


def variant_model(backend):
    return nn.Sequential(
        nn.Dropout2d(0.3, backend=backend), nn.FeatureAlphaDropout(0.3, backend=backend),
        nn.GaussianDropout(0.3, backend=backend), nn.VariationalDropout(0.3, backend=backend),
        nn.AlphaDropout(0.3, backend=backend), nn.Dropout(0.3, broadcast_dims=2, backend=backend),
        nn.ChannelDropout(0.3, backend=backend))


@backends
def test_reseed_covers_every_variant(backend):
    x = signed(4, 8, 16)
    model = variant_model(backend)
    dense = nn.DropConnectLinear(16, 5, 0.5, rng=0, backend=backend)
    outputs = []
    for _ in range(2):
        model.reseed(42)
        dense.reseed(42)
        outputs.append((model(x[None].repeat(2, 0).reshape(8, 8, 4, 4)).data,
                        dense(x[0]).data))
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))
    keys = [layer.generator.seed for layer in model]
    assert len(set(keys)) == len(model)
    assert dense.generator.seed == nn.Sequential(nn.Dropout(0.1)).reseed(42)[0].generator.seed
    model.reseed(43)
    assert not np.array_equal(model(x[None].repeat(2, 0).reshape(8, 8, 4, 4)).data,
                              outputs[0][0])


def test_existing_models_keep_their_seeds():
    # Only Dropout layers in an MLP: layer k still gets SeedSequence([seed, k]).
    model = nn.MLP([5, 8, 8, 3], dropout=[0.2, 0.5, 0.5], seed=7)
    keys = [layer.generator.seed for layer in model if isinstance(layer, nn.Dropout)]
    expected = [int(np.random.SeedSequence([7, k]).generate_state(1, np.uint64)[0])
                for k in range(3)]
    assert keys == expected


def test_reprs_and_exports():
    assert repr(nn.Dropout2d(0.2)) == "Dropout2d(p=0.2)"
    assert repr(nn.ChannelDropout(0.2, channel_axis=-1)) == (
        "ChannelDropout(p=0.2, channel_axis=-1, batch_axis=0)")
    assert repr(nn.Dropout(0.5)) == "Dropout(p=0.5)"
    assert repr(nn.DropConnectLinear(3, 2, 0.1)) == "DropConnectLinear(3, 2, p=0.1, dtype=float32)"
    for name in ["ChannelDropout", "Dropout1d", "Dropout2d", "Dropout3d", "VariationalDropout",
                 "AlphaDropout", "FeatureAlphaDropout", "GaussianDropout", "DropConnectLinear",
                 "alpha_dropout", "gaussian_dropout", "dropconnect_linear"]:
        assert name in nn.__all__ and getattr(nn, name) is not None
