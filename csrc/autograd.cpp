// autograd.cpp: autograd of the ops whose Python autograd wrapper (torch.library.register_autograd,
// fastconv/ops.py) costs more than their kernel. cross_entropy on a training batch (128 x 10 logits)
// computes in a few microseconds, and so does a net's last linear layer (128 x 512 -> 10), while
// torch.library's Python wrapper adds tens per call (argument defaults filled in Python, a Python
// autograd.Function per call); a C++ autograd Function registered for the Autograd key keeps the whole
// call in C++. The backward ops (cross_entropy_backward; linear_grad_input, linear_grad_weight,
// bias_grad) are called through the dispatcher, so under create_graph their own (Python) autograd still
// applies: double backward of linear works, that of cross_entropy is refused, as before. Every other op
// keeps its autograd in fastconv/ops.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                      const std::optional<at::Tensor>& weight, int64_t reduction,
                                                      int64_t ignore_index, double label_smoothing) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastconv::cross_entropy", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, int64_t, int64_t, double)>();
  return op.call(input, target, weight, reduction, ignore_index, label_smoothing);
}

at::Tensor call_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                       int64_t reduction, int64_t ignore_index, double label_smoothing) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastconv::cross_entropy_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
                                               int64_t, double)>();
  return op.call(grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing);
}

// loss, lse = cross_entropy(input, target, weight, ...): the gradient flows to input only (lse is not
// differentiable; targets are indices; class weights get none, as in fastconv/ops.py before).
struct CrossEntropy : torch::autograd::Function<CrossEntropy> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, int64_t reduction, int64_t ignore_index,
                               double label_smoothing) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse] = call_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), lse});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->mark_non_differentiable({lse});
    // lse never has a gradient: without this, every backward would first allocate and zero one for it
    // (aten::zeros, 4 of the ~60 us of a 128 x 10 forward and backward)
    ctx->set_materialize_grads(false);
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad_input;
    if (ctx->needs_input_grad(0) && grads[0].defined()) {  // (undefined: no gradient reached the loss)
      // Without create_graph nothing records the backward op: call its kernel below autograd (the
      // Python autograd of cross_entropy_backward, which refuses double backward, would only cost).
      std::optional<at::AutoDispatchBelowADInplaceOrView> below;
      if (!at::GradMode::is_enabled()) below.emplace();
      const std::optional<at::Tensor> weight = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
      grad_input = call_cross_entropy_backward(grads[0], saved[0], saved[1], weight, saved[3],
                                               ctx->saved_data["reduction"].toInt(),
                                               ctx->saved_data["ignore_index"].toInt(),
                                               ctx->saved_data["label_smoothing"].toDouble());
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---------------------------------------------------------------- linear

at::Tensor call_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastconv::linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(input, weight, bias);
}

// linear_grad_input(grad_output, weight) and linear_grad_weight(grad_output, input)
at::Tensor call_linear_grad(bool input_grad, const at::Tensor& grad, const at::Tensor& other) {
  using Pair = at::Tensor(const at::Tensor&, const at::Tensor&);
  static const auto gi = c10::Dispatcher::singleton().findSchemaOrThrow("fastconv::linear_grad_input", "").typed<Pair>();
  static const auto gw = c10::Dispatcher::singleton().findSchemaOrThrow("fastconv::linear_grad_weight", "").typed<Pair>();
  return (input_grad ? gi : gw).call(grad, other);
}

at::Tensor call_bias_grad(const at::Tensor& grad, int64_t channel_dim) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastconv::bias_grad", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(grad, channel_dim);
}

// y = linear(x, W, b): gradients for x (linear_grad_input), W (linear_grad_weight) and b (bias_grad
// over every dimension but the last), each only where autograd asks for it.
struct Linear : torch::autograd::Function<Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out = call_linear(input, weight, bias);
    ctx->save_for_backward({input, weight});  // saved[0], saved[1]
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    std::optional<at::AutoDispatchBelowADInplaceOrView> below;  // as for cross_entropy's backward
    if (!at::GradMode::is_enabled()) below.emplace();
    at::Tensor gi, gw, gb;
    if (ctx->needs_input_grad(0)) gi = call_linear_grad(true, grad, saved[1]);
    if (ctx->needs_input_grad(1)) gw = call_linear_grad(false, grad, saved[0]);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) gb = call_bias_grad(grad, -1);
    return {gi, gw, gb};
  }
};

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return Linear::apply(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_autograd(const at::Tensor& input, const at::Tensor& target,
                                                          const std::optional<at::Tensor>& weight, int64_t reduction,
                                                          int64_t ignore_index, double label_smoothing) {
  const variable_list out = CrossEntropy::apply(input, target, weight, reduction, ignore_index, label_smoothing);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("cross_entropy", &fastconv::cross_entropy_autograd);
  m.impl("linear", &fastconv::linear_autograd);
}
