// mixq report: search.json round trip and its error messages (file + JSON path), and the HTML page:
// balanced SVG, every group named and escaped, the front drawn, a legend entry per format, no
// script, and pages for records with nothing optional in them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeline/report/html_report.hpp"
#include "pipeline/report/report_charts.hpp"
#include "pipeline/report/search_record.hpp"
#include "pipeline/report/svg.hpp"
#include "tests/pipeline/report_examples.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using ::testing::HasSubstr;
using ::testing::Not;

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The message parsing `doc` gives; fails the test when it parses.
std::string parse_error(const json& doc) {
  try {
    parse_search_record(doc, "run/search.json");
  } catch (const search_record_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "parsed: " << doc.dump();
  return "";
}

struct temp_dir {
  explicit temp_dir(const std::string& name) : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
  fs::path path;
};

// Structural checks every rendered page must pass.
void expect_well_formed(const std::string& html, const search_record& r) {
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
  EXPECT_GE(count(html, "<svg"), 2u);
  EXPECT_EQ(count(html, "<table"), count(html, "</table>"));
  EXPECT_EQ(count(html, "<figure>"), count(html, "</figure>"));
  EXPECT_THAT(html, Not(HasSubstr("<script")));
  for (const char* fetch : {"href=", "src=", "url(", "@import"}) EXPECT_THAT(html, Not(HasSubstr(fetch)));
  for (const record_group& g : r.groups) EXPECT_THAT(html, HasSubstr(svg::escape(g.name))) << g.name;
}

TEST(SearchRecord, RoundTripsThroughWriteAndRead) {
  temp_dir dir("mixq-report-roundtrip");
  const search_record r = report_examples::nemotron_h();
  write_search_record(dir.path / "search.json", r);
  EXPECT_EQ(count(read_text(dir.path / "search.json"), "\"groups\""), 1u);
  EXPECT_FALSE(fs::exists(dir.path / fmt::format("search.json.tmp.{}", ::getpid())));
  const search_record back = read_search_record(dir.path / "search.json");
  EXPECT_EQ(search_record_to_json(back), search_record_to_json(r));
  EXPECT_EQ(back.groups.size(), r.groups.size());
  EXPECT_EQ(back.groups[0].unavailable, r.groups[0].unavailable);
  EXPECT_EQ(back.seconds, r.seconds);  // stage order survives
  EXPECT_EQ(back.expert_tokens, r.expert_tokens);
  EXPECT_EQ(back.reference_ppl, std::nullopt);
  EXPECT_EQ(read_search_record(dir.path / "search.json").excluded.size(), 2u);
}

TEST(SearchRecord, OptionalFieldsMayBeAbsent) {
  json doc = search_record_to_json(report_examples::llama5());
  for (const char* key : {"front", "measured", "reference_ppl", "expert_tokens", "excluded", "seconds"}) doc.erase(key);
  for (json& g : doc["groups"]) {
    g.erase("unavailable");
    g.erase("disabled_reason");
  }
  doc["groups"][0].erase("disabled");
  const search_record r = parse_search_record(doc, "run/search.json");
  EXPECT_TRUE(r.front.empty());
  EXPECT_FALSE(r.reference_ppl);
  EXPECT_FALSE(r.groups[0].disabled);
}

TEST(SearchRecord, ErrorsNameTheFileAndJsonPath) {
  const json good = search_record_to_json(report_examples::llama5());
  json doc = good;
  doc["groups"][3]["scores"]["fp8"] = "small";
  EXPECT_EQ(parse_error(doc), "run/search.json: groups[3].scores.fp8 must be a number");
  doc = good;
  doc["groups"][2].erase("weights");
  EXPECT_EQ(parse_error(doc), "run/search.json: groups[2].weights is missing");
  doc = good;
  doc.erase("budget_bits");
  EXPECT_EQ(parse_error(doc), "run/search.json: budget_bits is missing");
  doc = good;
  doc["measured"][1]["searched"] = 1;
  EXPECT_EQ(parse_error(doc), "run/search.json: measured[1].searched must be true or false");
  doc = good;
  doc["method"] = "magic";
  EXPECT_THAT(parse_error(doc), HasSubstr("run/search.json: method must be one of fisher | kl | hessian"));
  doc = good;
  doc["groups"][0]["kind"] = "conv";
  EXPECT_THAT(parse_error(doc), HasSubstr("groups[0].kind must be one of attention"));
  doc = good;
  doc["groups"][0]["chosen"] = "nf4";
  EXPECT_THAT(parse_error(doc), HasSubstr("groups[0].chosen \"nf4\" must be a format this group has a score for"));
  doc = good;
  doc["groups"][1]["scores"]["nf4"] = 1.0;
  EXPECT_EQ(parse_error(doc), "run/search.json: groups[1].scores.nf4 names a format that is not in formats");
  doc = good;
  doc["format_bits"].erase("fp8");
  EXPECT_THAT(parse_error(doc), HasSubstr("format_bits is missing candidate format \"fp8\""));
  doc = good;
  doc["expert_tokens"] = {{"model.layers.0.mlp.experts.3", 1.5}};
  EXPECT_EQ(parse_error(doc), "run/search.json: expert_tokens[\"model.layers.0.mlp.experts.3\"] must be an integer");
  doc = good;
  doc["groups"] = json::object();
  EXPECT_EQ(parse_error(doc), "run/search.json: groups must be an array");
  doc = good;
  doc["budget_bits"] = 1e308;
  EXPECT_EQ(parse_error(doc), "run/search.json: budget_bits must be above 0 and at most 32");
  doc = good;
  doc["effective_bits"] = -1;
  EXPECT_EQ(parse_error(doc), "run/search.json: effective_bits must be above 0 and at most 32");
  doc = good;
  doc["cost"] = "flops";
  EXPECT_THAT(parse_error(doc), HasSubstr("run/search.json: cost must be weight or active_moe"));
}

// A disabled group's modules are listed once, with their group, not again as excluded modules.
TEST(HtmlReport, DisabledGroupsAreListedOnce) {
  search_record r = report_examples::llama5();
  record_group* disabled = nullptr;
  for (record_group& g : r.groups)
    if (g.disabled) disabled = &g;
  ASSERT_NE(disabled, nullptr);
  ASSERT_FALSE(disabled->modules.empty());
  const std::string module = disabled->modules.front();
  r.excluded.push_back({module, disabled->disabled_reason});
  r.excluded.push_back({"model.unrelated.proj", "not a linear the search knows"});
  const std::string html = render_html_report(r);
  const size_t from = html.find("<h2>Excluded and disabled</h2>");
  ASSERT_NE(from, std::string::npos);
  const std::string section = html.substr(from, html.find("<h2>", from + 1) - from);
  size_t rows = 0;
  for (size_t at = section.find("<tr>"); at != std::string::npos; at = section.find("<tr>", at + 1))
    rows += section.substr(at, section.find("</tr>", at) - at).find(module) != std::string::npos;
  EXPECT_EQ(rows, disabled->name == module ? 1u : 0u) << module;  // (in its group's row, where the group is named so)
  EXPECT_NE(section.find("model.unrelated.proj"), std::string::npos);
}

TEST(SearchRecord, ReadNamesTheFileWhenItIsNotJson) {
  temp_dir dir("mixq-report-badjson");
  std::ofstream(dir.path / "search.json") << "{\"model\": ";
  try {
    read_search_record(dir.path / "search.json");
    ADD_FAILURE() << "parsed";
  } catch (const search_record_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir.path / "search.json").string() + ": not valid JSON"));
  }
}

TEST(HtmlReport, LlamaPageHasEveryPart) {
  const search_record r = report_examples::llama5();
  const std::string html = render_html_report(r);
  expect_well_formed(html, r);
  EXPECT_GE(count(html, "<polyline"), 2u);  // the front and the searched perplexities
  for (const std::string& format : r.formats)
    EXPECT_THAT(html, HasSubstr(fmt::format(">{} ({:.2f} bits):", format, r.format_bits.at(format)))) << format;
  EXPECT_THAT(html, HasSubstr("disabled (kept bf16)"));
  EXPECT_THAT(html, HasSubstr("nvfp4 needs K (172) to be a multiple of 16"));
  EXPECT_THAT(html, HasSubstr("unquantized 3.590"));
  EXPECT_THAT(html, HasSubstr("random (median of 20)"));
  EXPECT_THAT(html, HasSubstr("2.10e-03"));  // scores in scientific notation
  EXPECT_THAT(html, Not(HasSubstr("Expert token coverage")));
}

TEST(HtmlReport, NemotronPageShowsExpertCoverage) {
  const search_record r = report_examples::nemotron_h();
  const std::string html = render_html_report(r);
  expect_well_formed(html, r);
  EXPECT_THAT(html, HasSubstr("Expert token coverage"));
  EXPECT_THAT(html, HasSubstr("layer 1: 8 experts, 1 with zero tokens"));
  EXPECT_THAT(html, HasSubstr("layer 4: 8 experts, 2 with zero tokens"));
  EXPECT_THAT(html, HasSubstr("3 expert(s) saw no token"));
  EXPECT_THAT(html, HasSubstr(format_color("nvfp4_w4a16", r.formats)));
  EXPECT_THAT(html, HasSubstr("MTP head is not in the calibrated forward"));
}

TEST(HtmlReport, EscapesNamesAndReasons) {
  search_record r = report_examples::llama5();
  r.model = "runs/<b>&\"x\"";
  r.groups[0].name = "model.layers.0.<script>alert('q')</script>&";
  r.groups[1].unavailable["nvfp4"] = "K < 16 & \"odd\"";
  r.excluded.push_back({"a<b>", "why <not>"});
  const std::string html = render_html_report(r);
  EXPECT_THAT(html, Not(HasSubstr("<script")));
  EXPECT_THAT(html, Not(HasSubstr("<b>")));
  EXPECT_THAT(html, HasSubstr("model.layers.0.&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt;&amp;"));
  EXPECT_THAT(html, HasSubstr("K &lt; 16 &amp; &quot;odd&quot;"));
  EXPECT_THAT(html, HasSubstr("runs/&lt;b&gt;&amp;&quot;x&quot;"));
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
}

TEST(HtmlReport, RendersWithNothingOptional) {
  search_record r = report_examples::llama5();
  r.front.clear();
  r.measured.clear();
  r.expert_tokens.clear();
  r.excluded.clear();
  r.seconds.clear();
  r.reference_ppl.reset();
  for (record_group& g : r.groups) {
    g.unavailable.clear();
    g.disabled = false;
    if (g.chosen == "bf16") g.chosen = "fp8";
  }
  const std::string html = render_html_report(r);
  expect_well_formed(html, r);
  EXPECT_EQ(count(html, "<polyline"), 0u);
  EXPECT_THAT(html, HasSubstr("No score/bits front was recorded."));
  EXPECT_THAT(html, HasSubstr("No perplexity was measured."));
  EXPECT_THAT(html, HasSubstr("Every group can hold every candidate format."));
}

TEST(HtmlReport, RendersWhenEveryScoreIsZero) {
  search_record r = report_examples::llama5();
  for (record_group& g : r.groups)
    for (auto& [format, score] : g.scores) score = 0;
  const std::string html = render_html_report(r);
  expect_well_formed(html, r);
  EXPECT_THAT(html, HasSubstr("no positive scores to draw"));
}

// Writes both examples as run directories and renders them with write_report; they are left in
// the temporary directory for a person to open.
TEST(HtmlReport, WriteReportProducesHtmlAndJson) {
  const fs::path root = fs::temp_directory_path() / "mixq-report-examples";
  for (const auto& [name, record] : {std::pair{"llama5", report_examples::llama5()},
                                     std::pair{"nemotron_h", report_examples::nemotron_h()}}) {
    const fs::path run = root / name;
    fs::create_directories(run);
    write_search_record(run / "search.json", record);
    const report_paths out = write_report(run);
    EXPECT_EQ(out.html, run / "report.html");
    const std::string html = read_text(out.html);
    expect_well_formed(html, record);
    const json figures = json::parse(read_text(out.json));
    EXPECT_EQ(figures["groups"], record.groups.size());
    double share = 0;
    for (const json& a : figures["assignment"]) share += a["weight_share"].get<double>();
    EXPECT_NEAR(share, 1.0, 1e-9);
    EXPECT_FALSE(figures["front_at_budget"].is_null());
  }
  const json nh = json::parse(read_text(root / "nemotron_h" / "report.json"));
  EXPECT_EQ(nh["expert_coverage"].size(), 2u);
  EXPECT_EQ(nh["expert_coverage"][1]["zero_token_experts"], 2);
  // the MTP head's experts: labelled as its own, after the backbone's (its layers count from 0 again)
  search_record with_mtp = report_examples::nemotron_h();
  with_mtp.expert_tokens["mtp.layers.0.mixer.experts.0"] = 5;
  const report_figures fm = derive_report_figures(with_mtp);
  ASSERT_EQ(fm.experts.size(), 3u);
  EXPECT_EQ(fm.experts.back().label, "MTP layer 0");
  EXPECT_EQ(fm.experts.front().label.rfind("layer ", 0), 0u);
  const report_paths custom = write_report(root / "llama5", root / "custom" / "page.html");
  EXPECT_TRUE(fs::exists(custom.html));
  EXPECT_EQ(custom.json, root / "custom" / "report.json");
}

// A fixed-rule run into the search's run directory: its summary.json says the export is not the
// search's, and the report refuses to describe it; a search run's summary lets it through.
TEST(HtmlReport, RefusesASearchRecordThatALaterFixedRunOutdated) {
  const fs::path run = fs::temp_directory_path() / "mixq-report-outdated";
  fs::create_directories(run);
  write_search_record(run / "search.json", report_examples::llama5());
  std::ofstream(run / "summary.json") << R"({"out": "rs", "recipe": "built-in:llama_nvfp4", "searched": true})";
  EXPECT_NO_THROW(write_report(run));
  std::ofstream(run / "summary.json") << R"({"out": "rs", "recipe": "built-in:llama_nvfp4", "searched": false})";
  try {
    write_report(run);
    ADD_FAILURE() << "an outdated search.json was rendered";
  } catch (const search_record_error& e) {
    EXPECT_NE(std::string(e.what()).find("used the fixed rules of built-in:llama_nvfp4"), std::string::npos) << e.what();
  }
  fs::remove_all(run);
}

}  // namespace
}  // namespace mixq
