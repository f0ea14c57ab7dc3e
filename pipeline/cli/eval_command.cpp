// mixq eval --model DIR --data FILE [--ctx N]: FP32 perplexity of a Llama-family or Nemotron-H
// checkpoint on a token stream — pre-tokenized, or text encoded with the model's tokenizer — with
// non-overlapping windows (shared/data/tinystories/README.md protocol). Under mpirun / srun the
// windows are split across the processes, with the figures of one process. --layer-by-layer holds
// one layer's weights at a time.
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include <cmath>

#include <fmt/format.h>
#include <omp.h>

#include "calib/text_tokenizer.hpp"
#include "calib/token_file.hpp"
#include "pipeline/cli/commands.hpp"
#include "pipeline/eval/perplexity.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/model/nemotron_h.hpp"
#include "pipeline/parallel/run_world.hpp"

namespace mixq::cli {

void add_eval_command(CLI::App& app) {
  struct options {
    std::string model, data, dtype = "auto";
    int64_t ctx = 0;
    bool layer_by_layer = false;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("eval", "Perplexity of a checkpoint (FP32 forward) on text or a token file");
  cmd->add_option("--model", o->model,
                  "Hugging Face checkpoint directory (Llama, Mixtral, Qwen3-MoE or NemotronH ForCausalLM)")
      ->required();
  cmd->add_option("--data", o->data,
                  "text (*.txt: documents separated by <|endoftext|>; *.jsonl: {\"text\": ...} per line), encoded "
                  "with DIR/tokenizer.json (byte-level BPE) or DIR/tokenizer.model as [BOS] + ids per document; or "
                  "little-endian u16 / u32 token ids (*.u16.bin, *.u32.bin), or a NumPy integer array (*.npy, any shape, "
                  "read in row order)")
      ->required();
  cmd->add_option("--ctx", o->ctx, "window length in tokens (default: max_position_embeddings)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  cmd->add_option("--dtype", o->dtype, "token id width: u16, u32, or auto (from the file name)");
  cmd->add_flag("--layer-by-layer", o->layer_by_layer,
                "hold one layer's FP32 weights at a time (every window passes through a layer before the next "
                "loads): the same perplexity, a fraction of the memory");
  cmd->callback([o] {
    const run_world& world = run_world::get();
    std::unique_ptr<causal_lm> model;
    std::vector<int32_t> tokens;
    int64_t ctx = 0;
    world.stage([&] {
      if (!std::filesystem::is_directory(o->model))
        throw std::runtime_error(fmt::format("{}: model directory not found", o->model));
      if (!std::filesystem::exists(o->data)) throw std::runtime_error(fmt::format("{}: data file not found", o->data));
      const token_dtype dtype = token_dtype_from_string(o->dtype);
      model = load_causal_lm(o->model, {}, o->layer_by_layer ? layer_weights::on_demand : layer_weights::all);
      const int64_t max_positions = model->max_positions();
      ctx = o->ctx == 0 ? max_positions : o->ctx;
      if (ctx > max_positions)
        throw std::runtime_error(fmt::format("--ctx {} is more than the model allows: max_position_embeddings is {} in {}",
                                             ctx, max_positions, model->spec().origin));
      if (ctx < 2) throw std::runtime_error(fmt::format("--ctx {} is too small: a window needs at least 2 tokens", ctx));
      tokens = read_token_stream(o->data, o->model, model->spec().dims.vocab, dtype);
    });
    const perplexity_result r = evaluate_perplexity(*model, tokens, ctx, world);
    if (!std::isfinite(r.ppl)) throw std::runtime_error(nonfinite_perplexity_message(o->model, r.ppl));
    if (!world.root()) return;
    const model_dims& c = model->spec().dims;
    fmt::print("model:      {} ({}, {} layers, hidden {}, vocab {})\n", o->model, model->spec().architecture, c.layers,
               c.hidden, c.vocab);
    fmt::print("data:       {}\n", o->data);
    fmt::print("ctx:        {} ({} windows)\n", ctx, r.windows);
    fmt::print("tokens:     {}\n", r.tokens);
    fmt::print("predicted:  {}\n", r.predicted);
    fmt::print("mean NLL:   {:.6f} nats\n", r.mean_nll);
    fmt::print("ppl:        {:.6f}\n", r.ppl);
    fmt::print("speed:      {:.0f} tokens/s ({:.2f} s, {} threads{})\n", double(r.tokens) / r.seconds, r.seconds,
               omp_get_max_threads(), world.size() > 1 ? fmt::format(" in each of {} processes", world.size()) : "");
  });
}

}  // namespace mixq::cli
