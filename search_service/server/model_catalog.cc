#include "search_service/server/model_catalog.h"

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/limits.h"
#include "common/util/excerpt.h"
#include "common/util/file.h"
#include "common/util/json_fields.h"
#include "nlohmann/json.hpp"
#include "service_runtime/locate.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

using json = nlohmann::json;

constexpr char kCatalogFormat[] = "kvshare.catalog.v1";
constexpr size_t kMaxCatalogEntries = 1024;  // models, and corpora
constexpr size_t kMaxPathBytes = 4096;       // PATH_MAX

constexpr char kDefaultCatalog[] = R"({
  "format": "kvshare.catalog.v1",
  "models": [
    {"name": "smollm2", "path": "smollm2", "format": "gguf"},
    {"name": "stories260K", "path": "asset:stories260K.bin", "format": "llama2c",
     "tokenizer": "asset:tok512.bin"}
  ],
  "calibration_corpora": [
    {"name": "wikitext-2", "path": "asset:wikitext-2-raw-test.txt"},
    {"name": "tinystories", "path": "asset:tinystories-sample.txt"},
    {"name": "tinyshakespeare", "path": "asset:tinyshakespeare.txt"}
  ]
})";

// Resolves a catalog path (see the header) to a file path.
absl::StatusOr<std::string> ResolvePath(const std::string& path, const std::string& base_dir) {
  if (path == "smollm2") return SmolLm2GgufPath();
  if (absl::StartsWith(path, "asset:")) return AssetPath(path.substr(6));
  if (!path.empty() && path[0] == '/') return path;
  return base_dir.empty() ? path : base_dir + "/" + path;
}

const char* FormatName(ModelFormat f) { return f == ModelFormat::kGguf ? "gguf" : "llama2c"; }

}  // namespace

absl::StatusOr<std::unique_ptr<ModelCatalog>> ModelCatalog::FromJson(const std::string& text,
                                                                     const std::string& base_dir) {
  auto parsed = ParseJsonObject(text, "catalog");
  if (!parsed.ok()) return parsed.status();
  JsonFields f(*parsed, "catalog");
  std::string format;
  if (f.String("format", Field::kOptional, kMaxNameBytes, &format) && format != kCatalogFormat) {
    return absl::InvalidArgumentError(
        absl::StrFormat("catalog: format is \"%s\", expected %s", Excerpt(format), kCatalogFormat));
  }
  std::unique_ptr<ModelCatalog> catalog(new ModelCatalog());
  catalog->base_dir_ = base_dir;
  const json* models = f.Array("models", Field::kOptional, kMaxCatalogEntries);
  for (size_t i = 0; models != nullptr && i < models->size(); ++i) {
    const std::string at = absl::StrFormat("models[%d]", i);
    const json* e = f.ObjectAt(at.c_str(), (*models)[i]);
    if (e == nullptr) break;
    JsonFields ef = f.Nested(at.c_str(), *e);
    auto entry = std::make_unique<ModelEntry>();
    ef.String("name", Field::kOptional, kMaxNameBytes, &entry->name);
    ef.String("path", Field::kOptional, kMaxPathBytes, &entry->path);
    ef.String("format", Field::kOptional, kMaxNameBytes, &entry->format);
    ef.String("tokenizer", Field::kOptional, kMaxPathBytes, &entry->tokenizer);
    ef.Double("max_ppl_increase_pct", Field::kOptional, 0.0, 1000.0, &entry->max_ppl_increase_pct);
    if (!f.ok()) return f.status();
    if (entry->name.empty() || entry->path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("catalog: models[%d] needs a name and a path", i));
    }
    if (!entry->format.empty() && entry->format != "gguf" && entry->format != "llama2c") {
      return absl::InvalidArgumentError(
          absl::StrFormat("catalog: models[%d] ('%s') format '%s' is not gguf or llama2c", i,
                          entry->name, entry->format));
    }
    const std::string name = entry->name;
    if (!catalog->models_.emplace(name, std::move(entry)).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("catalog: models[%d]: the name '%s' is used twice", i, name));
    }
  }
  const json* corpora = f.Array("calibration_corpora", Field::kOptional, kMaxCatalogEntries);
  for (size_t i = 0; corpora != nullptr && i < corpora->size(); ++i) {
    const std::string at = absl::StrFormat("calibration_corpora[%d]", i);
    const json* e = f.ObjectAt(at.c_str(), (*corpora)[i]);
    if (e == nullptr) break;
    JsonFields cf = f.Nested(at.c_str(), *e);
    CorpusEntry c;
    cf.String("name", Field::kOptional, kMaxNameBytes, &c.name);
    cf.String("path", Field::kOptional, kMaxPathBytes, &c.path);
    if (!f.ok()) return f.status();
    if (c.name.empty() || c.path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("catalog: calibration_corpora[%d] needs a name and a path", i));
    }
    const std::string name = c.name;
    if (!catalog->corpora_.emplace(name, std::move(c)).second) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "catalog: calibration_corpora[%d]: the name '%s' is used twice", i, name));
    }
  }
  if (!f.ok()) return f.status();
  return catalog;
}

absl::StatusOr<std::unique_ptr<ModelCatalog>> ModelCatalog::FromFile(const std::string& path) {
  auto text = ReadFileToString(path, kMaxCatalogFileBytes);
  if (!text.ok()) return text.status();
  const size_t slash = path.find_last_of('/');
  auto catalog = FromJson(*text, slash == std::string::npos ? "." : path.substr(0, slash));
  if (!catalog.ok()) {
    return absl::Status(catalog.status().code(),
                        absl::StrFormat("%s: %s", path, catalog.status().message()));
  }
  return catalog;
}

std::unique_ptr<ModelCatalog> ModelCatalog::Default() {
  return std::move(*FromJson(kDefaultCatalog, ""));
}

absl::StatusOr<std::shared_ptr<const CatalogModel>> ModelCatalog::GetModel(
    const std::string& name) {
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrFormat("model '%s' is not in the catalog (it has: %s)",
                                               name, absl::StrJoin(model_names(), ", ")));
  }
  ModelEntry& e = *it->second;
  absl::MutexLock lock(&e.mu);
  if (e.loaded != nullptr) return e.loaded;
  auto fail = [&](const absl::Status& s) {
    return absl::FailedPreconditionError(
        absl::StrFormat("catalog model '%s' does not load: %s", name, s.message()));
  };
  const auto start = std::chrono::steady_clock::now();
  auto path = ResolvePath(e.path, base_dir_);
  if (!path.ok()) return fail(path.status());
  std::string tokenizer_path;
  if (!e.tokenizer.empty()) {
    auto tp = ResolvePath(e.tokenizer, base_dir_);
    if (!tp.ok()) return fail(tp.status());
    tokenizer_path = *tp;
  }
  // The tokenizer goes to Load too: the model's fingerprint covers it.
  auto model = Model::Load(*path, tokenizer_path);
  if (!model.ok()) return fail(model.status());
  if (!e.format.empty() && e.format != FormatName((*model)->format())) {
    return fail(absl::InvalidArgumentError(absl::StrFormat(
        "%s is %s, the catalog says %s", *path, FormatName((*model)->format()), e.format)));
  }
  auto tokenizer = LoadTokenizerForModel(**model, tokenizer_path);
  if (!tokenizer.ok()) return fail(tokenizer.status());
  auto loaded = std::make_shared<CatalogModel>();
  loaded->name = name;
  loaded->model = std::move(*model);
  loaded->tokenizer = std::move(*tokenizer);
  loaded->load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("event=model_loaded model={} path={} layers={} fingerprint={} load_s={:.2f}", name,
               *path, loaded->model->config().n_layers, loaded->model->fingerprint().substr(0, 16),
               loaded->load_seconds);
  e.loaded = std::move(loaded);
  return e.loaded;
}

absl::StatusOr<std::string> ModelCatalog::ReadCorpus(const std::string& name) const {
  auto it = corpora_.find(name);
  if (it == corpora_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("calibration_corpus '%s' is not in the catalog (it has: %s)", name,
                        absl::StrJoin(corpus_names(), ", ")));
  }
  auto path = ResolvePath(it->second.path, base_dir_);
  absl::StatusOr<std::string> text =
      path.ok() ? ReadFileToString(*path) : absl::StatusOr<std::string>(path.status());
  if (!text.ok()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("catalog corpus '%s' cannot be read: %s", name, text.status().message()));
  }
  return text;
}

double ModelCatalog::QualityBudgetPct(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() ? kDefaultQualityBudgetPct : it->second->max_ppl_increase_pct;
}

std::vector<std::string> ModelCatalog::model_names() const {
  std::vector<std::string> names;
  for (const auto& [name, e] : models_) names.push_back(name);
  return names;
}

std::vector<std::string> ModelCatalog::corpus_names() const {
  std::vector<std::string> names;
  for (const auto& [name, c] : corpora_) names.push_back(name);
  return names;
}

std::vector<std::string> ModelCatalog::loaded_model_names() const {
  std::vector<std::string> names;
  for (const auto& [name, e] : models_) {
    absl::MutexLock lock(&e->mu);
    if (e->loaded != nullptr) names.push_back(name);
  }
  return names;
}

}  // namespace kvshare
