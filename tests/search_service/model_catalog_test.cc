// The search service's model catalog: config errors named, models loaded once on first use and
// shared, corpora by name, path forms (absolute, relative to the config, asset:).
#include "search_service/server/model_catalog.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

void ExpectInvalid(const std::string& json, const std::string& message) {
  auto c = ModelCatalog::FromJson(json, "");
  ASSERT_FALSE(c.ok()) << json;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(message));
}

TEST(ModelCatalogTest, AMalformedConfigIsRefusedNamingTheEntry) {
  ExpectInvalid("[1, 2]", "not a JSON object");
  ExpectInvalid(R"({"format": "other.v9"})", "format is \"other.v9\"");
  ExpectInvalid(R"({"models": [{"name": "a"}]})", "models[0] needs a name and a path");
  ExpectInvalid(R"({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]})",
                "models[1]: the name 'a' is used twice");
  ExpectInvalid(R"({"models": [{"name": "a", "path": "x", "format": "onnx"}]})",
                "format 'onnx' is not gguf or llama2c");
  ExpectInvalid(R"({"calibration_corpora": [{"path": "x"}]})",
                "calibration_corpora[0] needs a name and a path");
}

TEST(ModelCatalogTest, LoadsAModelOnceOnFirstUseAndSharesIt) {
  const std::string dir =
      absl::StrFormat("%s/model_catalog_test.%d", ::testing::TempDir(), getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/text.txt") << "hello\n";
  std::ofstream(dir + "/catalog.json") << absl::StrFormat(
      R"({"models": [{"name": "stories", "path": "asset:stories260K.bin", "format": "llama2c"},
                     {"name": "wrong-format", "path": "%s", "format": "gguf"},
                     {"name": "missing", "path": "nope.bin"}],
          "calibration_corpora": [{"name": "local", "path": "text.txt"},
                                  {"name": "gone", "path": "/nonexistent/x.txt"}]})",
      testing::Asset("stories260K.bin"));
  auto catalog = ModelCatalog::FromFile(dir + "/catalog.json");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  EXPECT_TRUE((*catalog)->loaded_model_names().empty());

  std::vector<const CatalogModel*> seen(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto m = (*catalog)->GetModel("stories");
      ASSERT_TRUE(m.ok()) << m.status();
      seen[t] = m->get();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<const CatalogModel*>(seen.begin(), seen.end()).size(), 1u);
  EXPECT_EQ(seen[0]->model->config().n_layers, 5);
  EXPECT_EQ((*catalog)->loaded_model_names(), std::vector<std::string>{"stories"});

  auto unknown = (*catalog)->GetModel("gpt-5");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(unknown.status().message()),
              HasSubstr("model 'gpt-5' is not in the catalog (it has: missing, stories, "
                        "wrong-format)"));
  auto wrong = (*catalog)->GetModel("wrong-format");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(wrong.status().message()),
              HasSubstr("is llama2c, the catalog says gguf"));
  auto missing = (*catalog)->GetModel("missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir + "/nope.bin"));

  auto text = (*catalog)->ReadCorpus("local");  // relative to the config's directory
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "hello\n");
  EXPECT_EQ((*catalog)->ReadCorpus("gone").status().code(), absl::StatusCode::kFailedPrecondition);
  auto no_corpus = (*catalog)->ReadCorpus("wiki");
  EXPECT_EQ(no_corpus.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(no_corpus.status().message()), HasSubstr("calibration_corpus 'wiki'"));
  std::filesystem::remove_all(dir);
}

TEST(ModelCatalogTest, TheDefaultCatalogMatchesTheExampleFile) {
  auto example = ModelCatalog::FromFile(testing::SourcePath("search_service/catalog.example.json"));
  ASSERT_TRUE(example.ok()) << example.status();
  auto builtin = ModelCatalog::Default();
  EXPECT_EQ((*example)->model_names(), builtin->model_names());
  EXPECT_EQ((*example)->corpus_names(), builtin->corpus_names());
  for (const std::string& corpus : builtin->corpus_names()) {
    EXPECT_TRUE(builtin->ReadCorpus(corpus).ok()) << corpus;
  }
}

}  // namespace
}  // namespace kvshare
