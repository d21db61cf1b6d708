// The models and calibration corpora a search service offers, by name, from a JSON config:
//
//   {"format": "kvshare.catalog.v1",
//    "models": [{"name": "smollm2", "path": "smollm2", "format": "gguf",
//                "max_ppl_increase_pct": 5},
//               {"name": "stories260K", "path": "asset:stories260K.bin", "format": "llama2c",
//                "tokenizer": "asset:tok512.bin"}],
//    "calibration_corpora": [{"name": "wikitext-2", "path": "asset:wikitext-2-raw-test.txt"}]}
//
// Paths: "smollm2" is the SmolLM2-135M-Instruct GGUF wherever service_runtime/locate.h finds it;
// "asset:FILE" is FILE in the shared assets folder; a relative path is relative to the
// config's directory. "format" ("gguf" or "llama2c"; optional) is checked against the file.
// "tokenizer" is for llama2.c checkpoints (default: tok<vocab>.bin beside the model).
// "max_ppl_increase_pct" is the model's quality budget: the most a rolled-out version may raise
// held-out perplexity over the unshared model, in percent (in [0, 1000]; default
// kDefaultQualityBudgetPct). CreateRollout refuses a version past it (search_service/server/
// quality_gate.h) unless the request allows the regression.
//
// A model is loaded on the first request that needs it and then shared by every job (Model
// and Tokenizer are immutable and thread-safe); concurrent first requests load it once.
// Corpora are read when asked for. Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

// The quality budget of a model whose entry names none, and of a model not in the catalog: the
// loosest budget issue 17's frontier plans for (1%, 2%, 5%).
constexpr double kDefaultQualityBudgetPct = 5.0;

struct CatalogModel {
  std::string name;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  double load_seconds = 0;
};

class ModelCatalog {
 public:
  // InvalidArgument naming the entry and field for a malformed config (duplicate names,
  // missing path, unknown format).
  static absl::StatusOr<std::unique_ptr<ModelCatalog>> FromJson(const std::string& text,
                                                                const std::string& base_dir);
  static absl::StatusOr<std::unique_ptr<ModelCatalog>> FromFile(const std::string& path);
  // SmolLM2-135M-Instruct and stories260K; WikiText-2, TinyStories and Tiny Shakespeare
  // (search_service/catalog.example.json holds the same).
  static std::unique_ptr<ModelCatalog> Default();

  // The loaded model. NotFound "model 'x' is not in the catalog (it has: ...)";
  // FailedPrecondition when the entry's file does not load (the message says which and why).
  absl::StatusOr<std::shared_ptr<const CatalogModel>> GetModel(const std::string& name);
  // The corpus text. NotFound "calibration_corpus 'x' is not in the catalog (it has: ...)";
  // FailedPrecondition when its file cannot be read.
  absl::StatusOr<std::string> ReadCorpus(const std::string& name) const;

  bool HasModel(const std::string& name) const { return models_.count(name) > 0; }
  // The model's "max_ppl_increase_pct"; kDefaultQualityBudgetPct when the entry names none or
  // `name` is not in the catalog.
  double QualityBudgetPct(const std::string& name) const;
  std::vector<std::string> model_names() const;
  std::vector<std::string> corpus_names() const;
  // Names of the models loaded so far.
  std::vector<std::string> loaded_model_names() const;

 private:
  struct ModelEntry {
    std::string name, path, format, tokenizer;
    double max_ppl_increase_pct = kDefaultQualityBudgetPct;
    absl::Mutex mu;  // held while loading, so concurrent first users load once
    std::shared_ptr<const CatalogModel> loaded ABSL_GUARDED_BY(mu);
  };
  struct CorpusEntry {
    std::string name, path;
  };
  ModelCatalog() = default;

  // Built at construction, then only read (the entries' own state has its own mutex).
  std::map<std::string, std::unique_ptr<ModelEntry>> models_;
  std::map<std::string, CorpusEntry> corpora_;
  std::string base_dir_;
};

}  // namespace kvshare
