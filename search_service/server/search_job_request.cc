#include "search_service/server/search_job_request.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/util/sha256.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace kvshare {
namespace {

constexpr size_t kMaxIdempotencyKeyBytes = 256;

}  // namespace

absl::StatusOr<PreparedSearchJob> PrepareSearchJob(const v1::CreateSearchJobRequest& request,
                                                   ModelCatalog& catalog) {
  if (request.model().empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model is empty; give a catalog model name (one of: %s)",
                        absl::StrJoin(catalog.model_names(), ", ")));
  }
  if (!catalog.HasModel(request.model())) return catalog.GetModel(request.model()).status();
  if (request.idempotency_key().size() > kMaxIdempotencyKeyBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("idempotency_key is %d bytes; at most %d",
                                                      request.idempotency_key().size(),
                                                      kMaxIdempotencyKeyBytes));
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
  // The model-free checks first: a bad request costs no model load.
  auto checked = CheckSearchRequest(r);
  if (!checked.ok()) return checked.status();

  PreparedSearchJob p;
  p.calibration_text_bytes = static_cast<int64_t>(r.calibration_text->size());
  auto model = catalog.GetModel(request.model());
  if (!model.ok()) return model.status();
  p.model = std::move(*model);
  auto search = PrepareSearch(r, *p.model->model, *p.model->tokenizer);
  if (!search.ok()) return search.status();
  p.search = std::move(*search);
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
