// `mixq quantize` across real processes: run under `mpirun -np N`, every rank runs run_quantize on
// its share of a synthetic checkpoint, and the export (every file, byte for byte), the search
// scores and the calibration statistics must be what one process writes (rank 0 runs that one
// alone afterwards, with another thread count). A failure on one rank must reach every rank as the same run_failed, naming that
// rank, with nothing exported.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "pipeline/parallel/run_world.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "tests/same_statistics.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

const run_world& world() { return run_world::get(); }

void barrier() { (void)world().all_gather(""); }

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A directory every rank sees: rank 0's, removed when the test ends.
struct shared_dir {
  fs::path path;
  explicit shared_dir(const std::string& name) {
    std::string mine;
    if (world().root()) {
      mine = (fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))).string();
      fs::remove_all(mine);
      fs::create_directories(mine);
    }
    path = world().all_gather(mine)[0];
  }
  ~shared_dir() {
    barrier();
    if (world().root()) fs::remove_all(path);
  }
};

fs::path synth_on_root(const fs::path& dir, synth_arch arch) {
  if (world().root()) {
    synth_options o;
    o.arch = arch;
    o.out = dir / "model";
    synth_checkpoint(o);
  }
  barrier();
  return dir / "model";
}

quantize_request request(const fs::path& model, const fs::path& out, recipe r) {
  quantize_request rq;
  rq.model = model;
  rq.out = out;
  rq.rcp = std::move(r);
  rq.rcp.calibration.samples = 7;  // (not a multiple of the rank counts the suite runs)
  rq.rcp.calibration.seq_len = 64;
  return rq;
}

// The run across every rank (holding `weights`) against the same run in one process holding the
// whole model, on rank 0.
void expect_same_as_one_process(synth_arch arch, recipe r, std::optional<layer_weights> weights = std::nullopt) {
  shared_dir dir(std::string("mixq-mpi-quantize-") + std::string(to_string(arch)));
  const fs::path model = synth_on_root(dir.path, arch);
  quantize_request spread = request(model, dir.path / "spread", r);
  spread.weights = weights;
  const quantize_report across = run_quantize(spread, world());
  {  // every process returns the same figures
    std::string mine(3 * sizeof(double), '\0');
    const double ppl[3] = {across.ppl_source, across.ppl_fake_quant, across.ppl_export};
    std::memcpy(mine.data(), ppl, sizeof ppl);
    for (const std::string& other : world().all_gather(mine)) EXPECT_EQ(other, mine);
  }
  {  // every process logged its run, to the end
    const std::string log = file_bytes(across.run_dir / "logs" / ("rank-" + std::to_string(world().rank()) + ".log"));
    EXPECT_NE(log.find("calibrate: "), std::string::npos) << log;
    EXPECT_NE(log.find("done: wrote"), std::string::npos) << log;
  }
  if (!world().root()) return;
  EXPECT_EQ(across.calib_sequences, 7);
  // One process with 2 threads (the ranks run 1 each): neither count may change a bit.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  quantize_request alone_rq = request(model, dir.path / "alone", r);
  alone_rq.weights = layer_weights::all;
  const quantize_report alone = run_quantize(alone_rq, run_world::alone());
  omp_set_num_threads(threads);

  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path / "alone")) {
    ++files;
    const fs::path other = dir.path / "spread" / e.path().filename();
    ASSERT_TRUE(fs::exists(other)) << other;
    EXPECT_TRUE(file_bytes(e.path()) == file_bytes(other)) << e.path().filename() << " differs";
  }
  EXPECT_GE(files, 3u);
  EXPECT_EQ(across.ppl_export, alone.ppl_export);

  testing::expect_same_statistics(across.stats_file, alone.stats_file);
  if (r.search.enabled) {
    ASSERT_TRUE(across.searched && alone.searched);
    EXPECT_EQ(across.search.scores.score, alone.search.scores.score);  // added in sequence order: the same bits
    EXPECT_EQ(across.search.choice, alone.search.choice);
  }
}

TEST(mpi_quantize, fixed_rules_give_the_bytes_of_one_process) {
  expect_same_as_one_process(synth_arch::llama, load_recipe("llama_nvfp4"));
}

// --resume: the root reads the source perplexity an earlier run stored, and every rank takes it.
TEST(mpi_quantize, a_resumed_run_takes_the_stored_source_perplexity_on_every_rank) {
  shared_dir dir("mixq-mpi-quantize-resume");
  const fs::path model = synth_on_root(dir.path, synth_arch::llama);
  quantize_request rq = request(model, dir.path / "out", load_recipe("llama_fp8"));
  const quantize_report first = run_quantize(rq, world());
  rq.resume = rq.overwrite = true;
  const quantize_report again = run_quantize(rq, world());
  EXPECT_FALSE(first.ppl_source_reused);
  EXPECT_TRUE(again.ppl_source_reused);
  EXPECT_EQ(again.ppl_source, first.ppl_source);
  EXPECT_EQ(again.ppl_export, first.ppl_export);
}

TEST(mpi_quantize, layer_by_layer_gives_the_bytes_of_one_process_holding_the_model) {
  expect_same_as_one_process(synth_arch::nemotron_h, load_recipe("mamba_moe_nvfp4_conservative"),
                             layer_weights::on_demand);
}

TEST(mpi_quantize, a_search_gives_the_scores_and_bytes_of_one_process) {
  recipe r = load_recipe("auto_nvfp4_fp8_5p0bits");
  r.search.effective_bits = 10.0;  // (the tiny models' routers and embeddings stay large)
  r.search.score_samples = 5;
  expect_same_as_one_process(synth_arch::nemotron_h, r);
  r.search.effective_bits = 7.0;
  expect_same_as_one_process(synth_arch::mixtral, r);
}

TEST(mpi_quantize, kl_scores_are_added_in_sequence_order) {
  recipe r = load_recipe("auto_nvfp4_fp8_5p0bits");
  r.search.effective_bits = 9.0;
  r.search.score_samples = 5;
  r.search.method = score_method::kl;
  expect_same_as_one_process(synth_arch::llama, r);
}

// A NaN in the weight the second rank quantizes (the second quantized linear): only that rank finds
// it, and every rank learns it from that rank.
TEST(mpi_quantize, a_failure_on_one_rank_stops_every_rank) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  shared_dir dir("mixq-mpi-quantize-nan");
  const fs::path model = synth_on_root(dir.path, synth_arch::llama);
  const std::string bad = "model.layers.0.self_attn.k_proj.weight";
  if (world().root()) {
    const fs::path file = model / "model.safetensors";
    std::string bytes = file_bytes(file);
    uint64_t header = 0;
    std::memcpy(&header, bytes.data(), 8);
    const nlohmann::json h = nlohmann::json::parse(bytes.substr(8, header));
    const size_t at = 8 + header + h.at(bad).at("data_offsets")[0].get<size_t>() + 2 * 3;
    const uint16_t nan = 0x7fc0;  // BF16 quiet NaN
    std::memcpy(bytes.data() + at, &nan, 2);
    std::ofstream(file, std::ios::binary) << bytes;
  }
  barrier();
  const quantize_request rq = request(model, dir.path / "out", load_recipe("llama_nvfp4"));
  try {
    run_quantize(rq, world());
    ADD_FAILURE() << "no error";
  } catch (const run_failed& e) {
    EXPECT_EQ(e.rank(), 1);
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path / "out"));
  // each process's log ends with the failure, naming the process that had it
  const std::string log = file_bytes(dir.path / "out.run" / "logs" / ("rank-" + std::to_string(world().rank()) + ".log"));
  EXPECT_NE(log.find("error process 1 failed: tensor '" + bad), std::string::npos) << log;
}

// The root writes the export; where that fails before the others verify it, every process still
// learns it (and nothing waits for an announcement that never comes).
TEST(mpi_quantize, an_export_the_root_cannot_write_stops_every_rank) {
  shared_dir dir("mixq-mpi-quantize-unwritable");
  const fs::path model = synth_on_root(dir.path, synth_arch::llama);
  quantize_request rq = request(model, "/proc/self/mixq-out", load_recipe("llama_nvfp4"));
  rq.run_dir = dir.path / "run";
  try {
    run_quantize(rq, world());
    ADD_FAILURE() << "no error";
  } catch (const run_failed& e) {
    EXPECT_EQ(e.rank(), world().size() > 1 ? 0 : -1) << e.what();
  } catch (const std::exception& e) {
    EXPECT_EQ(world().size(), 1) << e.what();  // alone, the error passes through as it is
  }
}

}  // namespace
}  // namespace mixq

int main(int argc, char** argv) {
  mixq::run_world::start(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS();
  std::vector<float> any{float(failed != 0)};
  mixq::run_world::get().max(any);
  return any[0] != 0.0f ? 1 : 0;
}
