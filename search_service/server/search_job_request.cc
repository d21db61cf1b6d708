#include "search_service/server/search_job_request.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/limits.h"
#include "common/util/excerpt.h"
#include "common/util/sha256.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "kernels/cpu/matmul.h"
#include "search_service/drop_search.h"

namespace kvshare {
namespace {

constexpr size_t kMaxIdempotencyKeyBytes = kMaxNameBytes;

// A name field within kMaxNameBytes, checked before it is looked up or echoed.
absl::Status CheckName(const char* field, const std::string& value) {
  if (value.size() <= kMaxNameBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("%s \"%s\" is %d bytes; at most %d", field,
                                                    Excerpt(value), value.size(), kMaxNameBytes));
}

}  // namespace

absl::StatusOr<PreparedSearchJob> PrepareSearchJob(const v1::CreateSearchJobRequest& request,
                                                   ModelCatalog& catalog) {
  for (absl::Status s : {CheckName("model", request.model()),
                         CheckName("calibration_corpus", request.calibration_corpus()),
                         CheckName("order", request.order()), CheckName("method", request.method()),
                         CheckName("activations", request.activations())}) {
    if (!s.ok()) return s;
  }
  if (request.model().empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model is empty; give a catalog model name (one of: %s)",
                        absl::StrJoin(catalog.model_names(), ", ")));
  }
  if (!catalog.HasModel(request.model())) return catalog.GetModel(request.model()).status();
  if (request.idempotency_key().size() > kMaxIdempotencyKeyBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "idempotency_key \"%s\" is %d bytes; at most %d", Excerpt(request.idempotency_key()),
        request.idempotency_key().size(), kMaxIdempotencyKeyBytes));
  }
  SearchRequest r;
  r.field_style = FieldStyle::kProtoField;
  switch (request.calibration_case()) {
    case v1::CreateSearchJobRequest::kCalibrationText:
      r.calibration_text = request.calibration_text();
      r.calibration_source = "calibration_text";
      break;
    case v1::CreateSearchJobRequest::kCalibrationCorpus: {
      if (request.calibration_corpus().empty()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("calibration_corpus is empty; give a corpus name (one of: %s)",
                            absl::StrJoin(catalog.corpus_names(), ", ")));
      }
      auto text = catalog.ReadCorpus(request.calibration_corpus());
      if (!text.ok()) return text.status();
      r.calibration_text = std::move(*text);
      r.calibration_source =
          absl::StrFormat("calibration_corpus '%s'", request.calibration_corpus());
      break;
    }
    case v1::CreateSearchJobRequest::CALIBRATION_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrFormat("calibration is missing: give calibration_text or calibration_corpus "
                          "(one of: %s)",
                          absl::StrJoin(catalog.corpus_names(), ", ")));
  }
  if (request.has_samples()) r.calibration.samples = request.samples();
  if (request.has_tokens()) r.calibration.tokens = request.tokens();
  if (request.target_case() == v1::CreateSearchJobRequest::kTargetLayers) {
    r.target_layers = request.target_layers();
  } else if (request.target_case() == v1::CreateSearchJobRequest::kTargetRatio) {
    r.target_ratio = request.target_ratio();
  }
  if (request.has_threshold()) r.threshold = request.threshold();
  if (!request.order().empty()) r.order = request.order();
  r.seed = request.seed();
  if (!request.method().empty()) r.method = request.method();
  if (request.has_best_of()) r.best_of = request.best_of();
  if (request.has_lazy()) r.lazy = request.lazy();
  if (request.has_max_nll_increase()) r.max_nll_increase = request.max_nll_increase();
  if (request.has_max_ppl_increase()) {
    r.max_ppl_increase = request.max_ppl_increase();
  }
  if (request.has_kv_block_tokens()) r.kv_block_tokens = request.kv_block_tokens();
  if (request.has_drop_attention()) r.drop_attention = request.drop_attention();
  if (request.has_drop_substitutes()) r.drop_substitutes = request.drop_substitutes();
  if (!request.activations().empty()) {
    r.activations = cpu::ActivationsFromName(request.activations());
    if (!r.activations.has_value()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "activations '%s' is not one of f32, int8, int8x2", Excerpt(request.activations())));
    }
  }
  HeldoutOptions heldout;
  heldout.tokens = request.has_heldout_tokens() ? request.heldout_tokens() : kDefaultHeldoutTokens;
  heldout.context =
      request.has_heldout_context() ? request.heldout_context() : kDefaultHeldoutContext;
  // The model-free checks first: a bad request costs no model load.
  auto checked = CheckSearchRequest(r);  // method, best_of, max_nll_increase among them
  if (!checked.ok()) return checked.status();
  if (heldout.tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("heldout_tokens %d must be >= 0 (0 = do not measure the held-out quality)",
                        heldout.tokens));
  }
  if (heldout.tokens > kMaxHeldoutTokens) {
    return absl::InvalidArgumentError(absl::StrFormat("heldout_tokens %d is above the limit, %d",
                                                      heldout.tokens, kMaxHeldoutTokens));
  }
  if (heldout.context < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("heldout_context %d must be >= 2", heldout.context));
  }
  if (r.max_ppl_increase.has_value() && heldout.tokens == 0) {
    return absl::InvalidArgumentError(
        "max_ppl_increase needs heldout_tokens > 0: the plan is trimmed on the held-out slice");
  }
  if (r.drop_attention.value_or(false) && heldout.tokens == 0) {
    return absl::InvalidArgumentError(
        "drop_attention needs heldout_tokens > 0: its fit and scoring sets are cut after the "
        "held-out slice");
  }

  PreparedSearchJob p;
  p.calibration_text_bytes = static_cast<int64_t>(r.calibration_text->size());
  auto model = catalog.GetModel(request.model());
  if (!model.ok()) return model.status();
  p.model = std::move(*model);
  auto search = PrepareSearch(r, *p.model->model, *p.model->tokenizer);
  if (!search.ok()) return search.status();
  p.search = std::move(*search);
  const ModelConfig& config = p.model->model->config();
  if (heldout.context > config.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("heldout_context %d exceeds the context of model '%s' (%d)",
                        heldout.context, request.model(), config.max_seq_len));
  }
  if (heldout.tokens > 0) {
    // Cut now, so a text too short for it is refused before the job exists.
    auto slice =
        CalibrationHeldoutSlice(*r.calibration_text, p.search.calibration, *p.model->tokenizer,
                                config, heldout, r.calibration_source, /*cli_flags=*/false);
    if (!slice.ok()) {
      // Too little text after the calibration lines is a malformed request here.
      return absl::InvalidArgumentError(slice.status().message());
    }
    p.heldout = std::move(*slice);
    if (r.drop_attention.value_or(false)) {
      const int after = HeldoutEndLine(*r.calibration_text, *p.model->tokenizer,
                                       p.heldout->first_line - 1, p.heldout->targets());
      auto sets = BuildProjectionSets(*r.calibration_text, *p.model->tokenizer, after,
                                      DropSetOptions(config.max_seq_len), r.calibration_source);
      if (!sets.ok()) return absl::InvalidArgumentError(sets.status().message());
      p.drop_sets = std::move(*sets);
    }
  }
  return p;
}

std::string SearchJobRequestHash(const v1::CreateSearchJobRequest& request) {
  v1::CreateSearchJobRequest copy = request;
  copy.clear_idempotency_key();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    copy.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(bytes);
}

}  // namespace kvshare
