// The `fsa` command-line tool run as a user runs it (no GPU needed): every bad option, value and
// environment variable is refused with exit code 2 and a message naming it, before anything is
// allocated (no abort, no silent acceptance); each command's --help prints its usage; the good
// paths work and the demo ends with a PASS verdict.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Result {
  int rc = -1;
  std::string output;  // stdout and stderr together
};

// Runs `fsa <args>` through the shell with the environment assignments `env` ("A=1 B=2").
Result run_tool(const std::string& args, const std::string& env = "") {
  const std::string command = (env.empty() ? "" : "env " + env + " ") + "'" FSA_TOOL_PATH "' " + args + " 2>&1";
  Result r;
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = pclose(pipe);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

// A small problem that runs in well under a second on the CPU reference.
const std::string kSmall = "--seqlens 200,31 --heads-q 4 --heads-kv 2 --head-dim 32 --topk 4 --window 64";

struct Case {
  const char* name;  // the ctest name
  std::string args, env;
  int rc;
  std::vector<std::string> says;      // substrings the output must contain
  std::vector<std::string> not_says;  // and must not
};

std::ostream& operator<<(std::ostream& out, const Case& c) { return out << c.name; }

void expect_case(const Case& c) {
  const Result r = run_tool(c.args, c.env);
  const std::string what = "fsa " + c.args + (c.env.empty() ? "" : " with " + c.env) + "\n" + r.output;
  EXPECT_EQ(r.rc, c.rc) << what;
  for (const std::string& s : c.says)
    EXPECT_NE(r.output.find(s), std::string::npos) << "expected '" << s << "' in " << what;
  for (const std::string& s : c.not_says)
    EXPECT_EQ(r.output.find(s), std::string::npos) << "did not expect '" << s << "' in " << what;
  // Never an abort or an uncaught exception.
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << what;
}

class CliRefuses : public ::testing::TestWithParam<Case> {};
TEST_P(CliRefuses, WithExitCode2NamingTheCulprit) { expect_case(GetParam()); }

// Every bad input: exit code 2 and the option or variable named.
const Case kRefused[] = {
    {"UnknownOption", "demo --bogus", "", 2, {"unknown option --bogus"}, {"needs a value"}},
    {"UnknownOptionWithValue", "demo --bogus 3", "", 2, {"unknown option --bogus"}},
    {"StrayArgument", "demo stray", "", 2, {"'stray'"}},
    {"MissingValue", "demo --seqlens", "", 2, {"--seqlens needs a value"}},
    {"OptionAsValue", "demo --seqlens --heads-q 4", "", 2, {"--seqlens needs a value"}},
    {"ValueGivenToFlag", "demo --no-rope=1", "", 2, {"--no-rope"}},
    {"InfoUnknownOption", "info --bogus", "", 2, {"unknown option --bogus"}},
    {"UnknownCommand", "frobnicate", "", 2, {"'frobnicate'"}},
    {"NoCommand", "", "", 2, {"usage: fsa"}},
    {"HelpUnknownTopic", "help frobnicate", "", 2, {"'frobnicate'"}},
    {"SeqlensTrailingComma", "demo --seqlens 100,200,", "", 2, {"--seqlens", "'100,200,'"}},
    {"SeqlensEmptyItem", "demo --seqlens 100,,200", "", 2, {"--seqlens"}},
    {"SeqlensEmpty", "demo --seqlens=", "", 2, {"--seqlens"}},
    {"SeqlensNegative", "demo --seqlens 100,-5", "", 2, {"--seqlens", "non-negative"}},
    {"SeqlensNotANumber", "demo --seqlens 1e3", "", 2, {"--seqlens", "'1e3'"}},
    {"SeqlensBeyondInt32", "demo --seqlens 4294967296", "", 2, {"--seqlens", "too large", "int32"}},
    {"SeqlensTrillion", "demo --seqlens 1000000000000", "", 2, {"--seqlens", "too large"}},
    {"SeqlensBeyond64Bits", "demo --seqlens 99999999999999999999", "", 2, {"--seqlens", "too large"}},
    {"SeqlensTotalBeyondInt32", "demo --seqlens 2000000000,2000000000", "", 2, {"--seqlens", "total length"}},
    {"SeqlensBeyondMemory", "demo --seqlens 2147483647", "", 2, {"--seqlens", "memory"}},
    {"HeadDimBeyondMemory", "demo --head-dim 100000", "", 2, {"--head-dim", "memory"}},
    {"HeadDimOdd", "demo --head-dim 7", "", 2, {"--head-dim", "even"}, {"argument x", " x:"}},
    {"HeadDimZero", "demo --head-dim 0", "", 2, {"--head-dim", "positive"}},
    {"HeadDimVZero", "demo --head-dim-v 0", "", 2, {"--head-dim-v"}},
    {"HeadsQTooLarge", "demo --heads-q 99999999999", "", 2, {"--heads-q", "too large"}, {"negative"}},
    {"HeadsQSuffix", "demo --heads-q 4x", "", 2, {"--heads-q", "'4x'"}},
    {"HeadsQZero", "demo --heads-q 0", "", 2, {"--heads-q", "positive"}},
    {"HeadsKvNotDividing", "demo --heads-kv 3", "", 2, {"--heads-kv", "divisor of --heads-q"}},
    {"HeadsQBeyondMemory", "demo --heads-q 2147483647 --heads-kv 1", "", 2, {"--heads-q", "memory"}},
    {"TopkBelowForcedBlocks", "demo --topk 2", "", 2, {"--topk", "at least 3"}},
    {"TopkBeyondMemory", "demo --topk 2147483647", "", 2, {"--topk", "memory"}},
    {"BlockSize", "demo --block-size 48", "", 2, {"--block-size", "32, 64 or 128"}},
    {"CmpStrideNotDividing", "demo --cmp-stride 5", "", 2, {"--cmp-stride", "divisor"}},
    {"CmpLenZero", "demo --cmp-len 0", "", 2, {"--cmp-len"}},
    {"CmpLenBeyondMemory", "demo --cmp-len 2147483584 --cmp-stride 64", "", 2, {"--cmp-len", "memory"}},
    {"WindowNegative", "demo --window -1", "", 2, {"--window"}},
    {"SeedNegative", "demo --seed -1", "", 2, {"--seed"}},
    {"SeedBeyond64Bits", "demo --seed 18446744073709551616", "", 2, {"--seed", "too large"}},
    {"Device", "demo --device gpu", "", 2, {"--device", "'gpu'"}},
    {"Dtype", "demo --dtype fp64", "", 2, {"--dtype", "'fp64'"}},
    {"Compression", "demo --compression max", "", 2, {"--compression"}},
    {"Gates", "demo --gates none", "", 2, {"--gates"}},
    {"CsvUnwritable", "demo --csv /nonexistent/dir/x.csv", "", 2, {"--csv", "/nonexistent/dir/x.csv"}},
    {"NumThreadsText", "demo " + kSmall, "FSA_NUM_THREADS=abc", 2, {"FSA_NUM_THREADS", "'abc'"}},
    {"NumThreadsZero", "demo " + kSmall, "FSA_NUM_THREADS=0", 2, {"FSA_NUM_THREADS"}},
    {"NumThreadsNegative", "demo " + kSmall, "FSA_NUM_THREADS=-1", 2, {"FSA_NUM_THREADS"}},
    {"NumThreadsSuffix", "demo " + kSmall, "FSA_NUM_THREADS=4x", 2, {"FSA_NUM_THREADS"}},
    {"NumThreadsHuge", "demo " + kSmall, "FSA_NUM_THREADS=99999999999", 2, {"FSA_NUM_THREADS"}},
    {"NumThreadsInfo", "info", "FSA_NUM_THREADS=abc", 2, {"FSA_NUM_THREADS"}},
    {"DisableWgmma", "info", "FSA_DISABLE_WGMMA=yes", 2, {"FSA_DISABLE_WGMMA"}},
    {"DecodeSelect", "info", "FSA_DECODE_SELECT=three-pass", 2, {"FSA_DECODE_SELECT", "'three-pass'"}},
    {"PrefillLongChunkText", "info", "FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=abc", 2, {"FSA_PREFILL_LONG_CHUNK_MIN_TOKENS"}},
    {"PrefillLongChunkZero", "demo " + kSmall, "FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=0", 2, {"FSA_PREFILL_LONG_CHUNK_MIN_TOKENS"}},
    {"SlcMinChunkNegative", "info", "FSA_SLC_MIN_CHUNK_TOKENS=-1", 2, {"FSA_SLC_MIN_CHUNK_TOKENS"}},
    {"CompressKSplitsSuffix", "info", "FSA_COMPRESS_K_SPLITS=4x", 2, {"FSA_COMPRESS_K_SPLITS", "'4x'"}},
    {"BenchWithoutKind", "bench", "", 2, {"'selected', 'compressed', 'layer' or 'decode'"}},
    {"BenchUnknownKind", "bench frobnicate", "", 2, {"'frobnicate'"}},
    {"BenchUnknownOption", "bench selected --bogus 1", "", 2, {"unknown option --bogus"}},
    {"BenchUnknownConfig", "bench selected --config S3-G1", "", 2, {"--config", "'S3-G1'"}},
    {"BenchLongConfigOnlyForLayer", "bench selected --config S1M-G4", "", 2, {"--config", "'S1M-G4'"}},
    {"BenchPatternOnlyForSelected", "bench layer --pattern random", "", 2, {"unknown option --pattern"}},
    {"BenchPattern", "bench selected --pattern diagonal", "", 2, {"--pattern"}},
    {"BenchPath", "bench selected --path fastest", "", 2, {"--path"}},
    {"BenchDenseThresholdZero", "bench selected --dense-threshold 0", "", 2, {"--dense-threshold"}},
    {"BenchDenseThresholdAboveTile", "bench selected --dense-threshold 65", "", 2, {"--dense-threshold"}},
    {"BenchItersZero", "bench compressed --iters 0", "", 2, {"--iters"}},
    {"BenchItersTooLarge", "bench compressed --iters 99999999999", "", 2, {"--iters", "too large"}},
    {"BenchWorkspaceCap", "bench layer --workspace-cap -5", "", 2, {"--workspace-cap"}},
    {"BenchCsvUnwritable", "bench layer --csv /nonexistent/dir/x.csv", "", 2, {"--csv"}},
    {"BenchNumThreads", "bench layer", "FSA_NUM_THREADS=abc", 2, {"FSA_NUM_THREADS"}},
    {"BenchDecodeConfig", "bench decode --config S64-G4", "", 2, {"--config", "D<batch>x<context>K", "'S64-G4'"}},
    {"BenchDecodeConfigQLen", "bench decode --config D16x128K-G16-Q9", "", 2, {"--config", "q_len 1-8"}},
    {"BenchDecodeConfigTrailing", "bench decode --config D16x128K-G16-Q1x", "", 2, {"--config", "'D16x128K-G16-Q1x'"}},
    {"BenchDecodeAllWithConfig", "bench decode --all --config D1x4K-G1-Q1", "", 2, {"--all", "--config"}},
    {"BenchDecodeAllTakesNoValue", "bench decode --all=1", "", 2, {"--all", "takes no value"}},
    {"BenchDecodeBandwidthText", "bench decode --hbm-bandwidth fast", "", 2, {"--hbm-bandwidth", "'fast'"}},
    {"BenchDecodeBandwidthUnit", "bench decode --hbm-bandwidth 3.35", "", 2, {"--hbm-bandwidth", "1e9"}},
    {"BenchDecodeBandwidthSuffix", "bench decode --hbm-bandwidth 3.35e12x", "", 2, {"--hbm-bandwidth"}},
    {"BenchDecodeCacheLayout", "bench decode --cache-layout hnd", "", 2, {"--cache-layout", "head-major", "'hnd'"}},
    {"BenchCacheLayoutOnlyForDecode", "bench layer --cache-layout head-major", "", 2, {"unknown option --cache-layout"}},
    {"BenchDecodeNoWorkspaceCap", "bench decode --workspace-cap 5", "", 2, {"unknown option --workspace-cap"}},
    {"BenchDecodeItersZero", "bench decode --iters 0", "", 2, {"--iters"}},
    {"BenchDecodeCsvUnwritable", "bench decode --csv /nonexistent/dir/x.csv", "", 2, {"--csv"}},
    {"BenchAllOnlyForDecode", "bench layer --all", "", 2, {"unknown option --all"}},
};
INSTANTIATE_TEST_SUITE_P(Cli, CliRefuses, ::testing::ValuesIn(kRefused),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

class CliHelp : public ::testing::TestWithParam<Case> {};
TEST_P(CliHelp, PrintsTheCommandsUsage) { expect_case(GetParam()); }

// The documents the help cites are the repository's own: no path out of it, no section or issue
// numbers of documents a clone does not have.
const std::vector<std::string> kForeignDocuments = {"../", "spec section", "issue "};

const Case kHelp[] = {
    {"Global", "--help", "", 0, {"usage: fsa <command>", "docs/semantics.md", "docs/measuring.md"}, kForeignDocuments},
    {"HelpCommand", "help", "", 0, {"usage: fsa <command>"}, kForeignDocuments},
    {"Demo", "demo --help", "", 0, {"usage: fsa demo", "--seqlens", "verdict"}, {"usage: fsa bench", "../"}},
    {"DemoAfterOptions", "demo --heads-q 4 -h", "", 0, {"usage: fsa demo"}},
    {"HelpDemo", "help demo", "", 0, {"usage: fsa demo"}},
    {"Bench", "bench --help", "", 0,
     {"usage: fsa bench", "bench selected", "bench compressed", "bench layer", "bench decode"}},
    {"BenchSelected", "bench selected --help", "", 0, {"usage: fsa bench selected", "--dense-threshold"},
     {"needs a value", "bench layer\n"}},
    {"BenchCompressed", "bench compressed --help", "", 0, {"usage: fsa bench compressed", "--workspace-cap"}},
    {"BenchLayer", "bench layer --help", "", 0, {"usage: fsa bench layer", "S1M-G4", "docs/measuring.md"}},
    {"HelpBenchLayer", "help bench layer", "", 0, {"usage: fsa bench layer"}},
    {"BenchDecode", "bench decode --help", "", 0,
     {"usage: fsa bench decode", "D16x128K-G16-Q1", "--all", "--hbm-bandwidth", "--cache-layout", "S64-G4-PREFILL",
      "FSA_COMMIT"},
     {"--workspace-cap", "bench layer\n"}},
    {"HelpBenchDecode", "help bench decode", "", 0, {"usage: fsa bench decode"}},
    {"Info", "info --help", "", 0, {"usage: fsa info"}},
};
INSTANTIATE_TEST_SUITE_P(Cli, CliHelp, ::testing::ValuesIn(kHelp),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

class CliRuns : public ::testing::TestWithParam<Case> {};
TEST_P(CliRuns, AndSucceeds) { expect_case(GetParam()); }

const Case kRuns[] = {
    {"Info", "info", "", 0, {"fsa 0.1.0", "CUDA kernels built:", "CPU reference threads:"}},
    {"Version", "--version", "", 0, {"fsa 0.1.0"}},
    {"DemoCpu", "demo --device cpu " + kSmall, "", 0,
     {"running on cpu", "GPU comparison: skipped (--device cpu)", "verdict: PASS"}},
    {"DemoCpuOneThread", "demo --device cpu " + kSmall, "FSA_NUM_THREADS=1", 0, {"verdict: PASS"}},
    {"DemoCpuFp16NoRope", "demo --device cpu --dtype fp16 --no-rope " + kSmall, "", 0, {"verdict: PASS"}},
    {"DemoCpuFp32MeanShared", "demo --device cpu --dtype fp32 --compression mean --gates shared " + kSmall, "", 0,
     {"verdict: PASS"}},
    {"DemoCpuInlineValues", "demo --device=cpu --seqlens=64,0,17 --heads-q=2 --heads-kv=1 --head-dim=16 --topk=3", "",
     0, {"verdict: PASS"}},
    {"DemoCpuEmptyBatch", "demo --device cpu --seqlens 0 --heads-q 2 --heads-kv 1 --head-dim 16", "", 0,
     {"verdict: PASS"}},
    {"DemoAuto", "demo " + kSmall, "", 0, {"verdict: PASS"}, {"CUDA: no usable CUDA device"}},
};
INSTANTIATE_TEST_SUITE_P(Cli, CliRuns, ::testing::ValuesIn(kRuns),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

bool has_cuda_device() { return run_tool("info").output.find("CUDA device: none found") == std::string::npos; }

// Without a GPU the demo says so plainly (the runtime's own words only on the detail line), and
// still gives a verdict on the CPU run.
TEST(Cli, DemoWithoutGpuSaysNoCudaDeviceFound) {
  if (has_cuda_device()) GTEST_SKIP() << "a CUDA device is present";
  expect_case({"", "demo " + kSmall, "", 0,
               {"CUDA: no CUDA device found\n", "GPU comparison: skipped (no CUDA device found)", "verdict: PASS"}});
  expect_case({"", "demo --device cuda " + kSmall, "", 2, {"--device cuda", "no CUDA device found"}});
}

// --csv writes the per-phase times.
TEST(Cli, DemoWritesCsv) {
  const std::string path = ::testing::TempDir() + "fsa_cli_demo.csv";
  std::remove(path.c_str());
  expect_case({"", "demo --device cpu --csv '" + path + "' " + kSmall, "", 0, {"verdict: PASS"}});
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("phase,ms\n"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("\"layer: nsa_backward\","), std::string::npos) << text.str();
  std::remove(path.c_str());
}

// The --csv check before a run neither truncates an existing file nor leaves a file it made when
// the run is refused afterwards (here for the environment, checked after the options).
TEST(Cli, CsvCheckLeavesFilesAlone) {
  const std::string kept = ::testing::TempDir() + "fsa_cli_kept.csv", made = ::testing::TempDir() + "fsa_cli_made.csv";
  {
    std::ofstream out(kept);
    out << "kept\n";
  }
  std::remove(made.c_str());
  expect_case({"", "demo --csv '" + kept + "' " + kSmall, "FSA_NUM_THREADS=abc", 2, {"FSA_NUM_THREADS"}});
  expect_case({"", "demo --csv '" + made + "' " + kSmall, "FSA_NUM_THREADS=abc", 2, {"FSA_NUM_THREADS"}});
  std::ifstream in(kept);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "kept");
  EXPECT_FALSE(std::ifstream(made).good()) << made << " was left behind";
  std::remove(kept.c_str());
}

}  // namespace
