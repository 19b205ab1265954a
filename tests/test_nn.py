"""numbaopt.nn: explicit backward passes against finite differences and against torch."""

import numpy as np
import pytest

import numbaopt
from numbaopt import nn, optim


def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to array ``a`` (float64, in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def check_close(actual, expected, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# -- Linear ----------------------------------------------------------------------------

def test_linear_init_is_torch_default_and_reproducible():
    model = nn.Linear(9, 200, rng=np.random.default_rng(3))
    assert model.weight.shape == (200, 9) and model.bias.shape == (200,)
    assert model.weight.dtype == np.float32 and model.bias.dtype == np.float32
    bound = 1 / 3     # 1 / sqrt(fan_in)
    for p in (model.weight, model.bias):
        assert np.all(np.abs(p.data) <= bound)
        assert np.abs(p.data).max() > 0.9 * bound     # uniform over the whole range
    again = nn.Linear(9, 200, rng=3)                  # a seed works as well as a Generator
    np.testing.assert_array_equal(again.weight.data, model.weight.data)
    np.testing.assert_array_equal(again.bias.data, model.bias.data)
    assert nn.Linear(2, 3, dtype=np.float64).weight.dtype == np.float64


def test_linear_without_bias_and_names():
    model = nn.Linear(3, 2, bias=False, rng=0)
    assert model.bias is None
    assert [name for name, _ in model.named_parameters()] == ["weight"]
    x = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(model(x), x @ model.weight.data.T)
    model.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(model.weight.grad, np.full((2, 3), 4.0))


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)], ids=["1d", "2d", "3d"])
def test_linear_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(1)
    model = nn.Linear(5, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal(shape)
    out_shape = shape[:-1] + (3,)
    v = rng.standard_normal(out_shape)          # loss = sum(v * model(x))

    def loss():
        return float(np.sum(v * model(x)))

    loss()
    grad_x = model.backward(v)
    check_close(model.weight.grad, numeric_grad(loss, model.weight.data))
    check_close(model.bias.grad, numeric_grad(loss, model.bias.data))
    check_close(grad_x, numeric_grad(loss, x))
    assert grad_x.shape == x.shape


def test_linear_accumulates_like_torch_and_zero_grad_clears():
    model = nn.Linear(2, 2, rng=0, dtype=np.float64)
    x = np.array([[1.0, 2.0]])
    model(x)
    model.backward(np.ones((1, 2)))
    first = model.weight.grad.copy()
    model(x)
    model.backward(np.ones((1, 2)))
    np.testing.assert_allclose(model.weight.grad, 2 * first)
    model.zero_grad()
    assert model.weight.grad is None and model.bias.grad is None


def test_linear_reads_the_arena_after_an_optimizer_is_built():
    model = nn.Linear(1, 1, rng=0)
    opt = optim.SGD(model.parameters(), lr=0.5)
    x = np.array([[2.0]], np.float32)
    before = model(x).item()
    opt.zero_grad()
    model.backward(np.ones((1, 1), np.float32))     # grads go into the arena
    assert opt.arena.has_grad.all()
    opt.step()                                       # w -= 0.5 * 2, b -= 0.5 * 1
    assert model(x).item() == pytest.approx(before - 2.0 * 1.0 - 0.5, abs=1e-6)


def test_linear_rejects_wrong_shapes():
    model = nn.Linear(3, 2, rng=0)
    with pytest.raises(ValueError, match="last dimension must be 3"):
        model(np.ones((4, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(3, 2, rng=0).backward(np.ones(2))
    model(np.ones((4, 3)))
    with pytest.raises(ValueError, match="grad_output has shape"):
        model.backward(np.ones((4, 3)))


def test_named_parameters_walk_submodules_in_order():
    class Net(nn.Module):
        def __init__(self):
            self.base = nn.Linear(4, 3, rng=0)
            self.relu = nn.ReLU()
            self.classifier = nn.Linear(3, 2, rng=1)
            self._cache = nn.Linear(1, 1, rng=2)      # private: not a parameter owner

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "base.weight", "base.bias", "classifier.weight", "classifier.bias"]
    assert net.parameters()[0] is net.base.weight
    assert all(isinstance(p, numbaopt.Parameter) for p in net.parameters())


def test_relu():
    relu = nn.ReLU()
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(relu(x), [0.0, 0.0, 2.0])
    out = relu.backward(np.array([5.0, 5.0, 5.0], np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.0, 5.0])
    assert out.dtype == np.float32


# -- losses ----------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_value_and_gradient(reduction):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    criterion = nn.MSELoss(reduction=reduction)

    def loss():
        return float(criterion(x, y))

    sq = (x - y) ** 2
    assert loss() == pytest.approx(sq.mean() if reduction == "mean" else sq.sum())
    grad, grad3 = criterion.backward(), criterion.backward(3.0)
    check_close(grad, numeric_grad(loss, x))
    check_close(grad3, 3 * grad)


def test_mse_loss_keeps_float32_and_refuses_broadcasting():
    criterion = nn.MSELoss()
    loss = criterion(np.ones((4, 1), np.float32), np.zeros((4, 1)))
    assert loss.dtype == np.float32 and isinstance(loss.item(), float)
    assert criterion.backward().dtype == np.float32
    with pytest.raises(ValueError, match="differ"):
        criterion(np.ones((4, 1), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="none")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["indices", "probabilities", "unbatched index",
                                  "unbatched probabilities"])
def test_cross_entropy_value_and_gradient(kind, reduction):
    rng = np.random.default_rng(3)
    if kind.startswith("unbatched"):
        x = rng.standard_normal(4)
        target = np.array(2) if kind.endswith("index") else rng.uniform(0, 2, 4)
    else:
        x = rng.standard_normal((5, 4))
        target = rng.integers(0, 4, 5) if kind == "indices" else rng.uniform(0, 2, (5, 4))
    criterion = nn.CrossEntropyLoss(reduction=reduction)

    def loss():
        return float(criterion(x, target))

    # the definition: -sum_c t_c log softmax(x)_c, averaged over samples for "mean"
    logits = x.reshape(-1, 4)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    if target.dtype.kind == "f":
        per_sample = -(target.reshape(-1, 4) * log_prob).sum(axis=1)
    else:
        per_sample = -log_prob[np.arange(len(logits)), target.reshape(-1)]
    expected = per_sample.mean() if reduction == "mean" else per_sample.sum()
    assert loss() == pytest.approx(expected, rel=1e-12)
    grad = criterion.backward()
    assert grad.shape == x.shape
    check_close(grad, numeric_grad(loss, x))


def test_cross_entropy_is_stable_and_checks_targets():
    criterion = nn.CrossEntropyLoss()
    loss = criterion(np.array([[1000.0, -1000.0]], np.float32), np.array([1]))
    assert loss.dtype == np.float32 and loss.item() == pytest.approx(2000.0)
    np.testing.assert_allclose(criterion.backward(), [[1.0, -1.0]])
    with pytest.raises(IndexError, match="Target 2 is out of bounds"):
        criterion(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="class-index target must have shape"):
        criterion(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="class-probability target"):
        criterion(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(TypeError, match="integer class indices"):
        criterion(np.zeros((1, 2)), np.array(["a"]))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.CrossEntropyLoss().backward()


# -- against torch ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name,target_kind", [
    ("MSELoss", "values"), ("CrossEntropyLoss", "indices"),
    ("CrossEntropyLoss", "probabilities")])
def test_linear_and_losses_match_torch(loss_name, target_kind, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    model = nn.Linear(5, 3, rng=rng, dtype=dtype)
    x = rng.standard_normal((6, 5)).astype(dtype)
    if target_kind == "values":
        target = rng.standard_normal((6, 3)).astype(dtype)
    elif target_kind == "indices":
        target = rng.integers(0, 3, 6)
    else:
        target = rng.uniform(0, 1, (6, 3)).astype(dtype)

    criterion = getattr(nn, loss_name)()
    out = model(x)
    loss = criterion(out, target)
    grad_x = model.backward(criterion.backward())

    tmodel = torch.nn.Linear(5, 3, dtype=getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        tmodel.weight.copy_(torch.from_numpy(model.weight.data))
        tmodel.bias.copy_(torch.from_numpy(model.bias.data))
    tx = torch.from_numpy(x).requires_grad_(True)
    tout = tmodel(tx)
    tloss = getattr(torch.nn, loss_name)()(tout, torch.from_numpy(target))
    tloss.backward()

    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=rtol, atol=rtol)
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(tloss.item(), rel=rtol)
    np.testing.assert_allclose(model.weight.grad, tmodel.weight.grad.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(model.bias.grad, tmodel.bias.grad.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=rtol, atol=rtol)


def test_unbatched_probability_target_matches_torch():
    """The tutorial's ``CrossEntropyLoss()(out, torch.tensor([1, 2.]))`` on a (2,) output."""
    torch = pytest.importorskip("torch")
    out = np.array([-1.4, 0.14], np.float32)
    target = np.array([1, 2], np.float32)
    criterion = nn.CrossEntropyLoss()
    loss = criterion(out, target)
    tout = torch.from_numpy(out).requires_grad_(True)
    tloss = torch.nn.CrossEntropyLoss()(tout, torch.from_numpy(target))
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-6)
    np.testing.assert_allclose(criterion.backward(), tout.grad.numpy(), rtol=1e-6, atol=1e-7)
