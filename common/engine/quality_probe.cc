#include "common/engine/quality_probe.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "common/engine/perplexity.h"

namespace kvshare {

// Plain prose of everyday topics, written for this probe (no source text): varied enough that
// a wrong layer mapping shows, long enough for kQualityProbeTokens tokens with every tokenizer
// the project loads (about 4 characters per SmolLM2 token, 2 per stories260K token).
const char kQualityProbeText[] =
    "The river runs through the middle of the town, and on summer evenings people walk along "
    "its banks to watch the light change over the water. A small bridge of grey stone joins "
    "the market square to the old mill, which was turned into a library many years ago. "
    "Children borrow books about ships, animals and faraway countries, and the librarian keeps "
    "a list of the stories they like best. In the autumn the trees by the water turn yellow "
    "and red, the market sells apples and pumpkins, and the bakery opens early to make bread "
    "for the farmers who come in from the hills. Once a year there is a fair with music, "
    "games and a long table where every family brings a dish to share. The mayor gives a short "
    "speech, the band plays until it is dark, and then everyone walks home slowly, talking "
    "about the weather and the harvest and the plans they have for the winter. When the snow "
    "comes the river freezes at the edges, the streets grow quiet, and the library stays open "
    "late so that people have somewhere warm to sit and read. A teacher from the school "
    "explains to her class how water turns to ice, why the days are shorter in December, and "
    "how the birds that leave in the autumn know the way back in the spring. The children "
    "write their answers in small notebooks and draw pictures of the bridge, the mill and the "
    "frozen river. In the spring the ice melts, the fields turn green again, and the first "
    "boats of the year carry wood and stone down to the city by the sea. Travellers who stop "
    "in the town often say that it feels as if nothing has changed for a hundred years, but "
    "the people who live there know that every season brings something new.";

absl::StatusOr<std::vector<int32_t>> QualityProbeIds(const Tokenizer& tokenizer,
                                                     const ModelConfig& config) {
  std::vector<int32_t> ids = tokenizer.Encode(kQualityProbeText, /*add_bos=*/false);
  const int64_t keep = std::min<int64_t>(kQualityProbeTokens, int64_t(config.max_seq_len) - 1);
  if (keep < 1 || ids.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quality probe: %d text tokens with a context of %d for '%s'; need at least 2", ids.size(),
        config.max_seq_len, config.name));
  }
  if (int64_t(ids.size()) > keep) ids.resize(keep);
  // BOS first (the document start); it is context, never a target.
  if (tokenizer.bos_id() >= 0) ids.insert(ids.begin(), tokenizer.bos_id());
  if (ids.size() < 2) {
    return absl::InvalidArgumentError("quality probe: the text gives fewer than 2 tokens");
  }
  return ids;
}

absl::StatusOr<std::unique_ptr<QualityProbe>> QualityProbe::Create(const Model& model,
                                                                   const Tokenizer& tokenizer,
                                                                   std::unique_ptr<Backend> backend,
                                                                   KvType kv_type) {
  auto ids = QualityProbeIds(tokenizer, model.config());
  if (!ids.ok()) return ids.status();
  EngineOptions eo;
  eo.kv_type = kv_type;
  eo.max_step_rows = static_cast<int>(ids->size());
  // One window: room for it unshared in fp32 (an upper bound for every type) plus a block.
  eo.kv_pool_bytes = int64_t(ids->size() + 2 * eo.block_tokens) * model.config().KvBytesPerToken();
  auto engine = Engine::Create(model, std::move(backend), eo);
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<QualityProbe>(new QualityProbe(std::move(*ids), std::move(*engine)));
}

absl::StatusOr<QualityProbeResult> QualityProbe::Measure(
    std::shared_ptr<const SharingStrategy> strategy) {
  const auto start = std::chrono::steady_clock::now();
  QualityProbeResult out;
  PerplexityOptions po;
  po.context = static_cast<int>(ids_.size());
  po.stride = po.context;
  po.strategy = std::move(strategy);
  auto ppl = EvaluatePerplexity(*engine_, ids_, po);
  if (!ppl.ok()) return ppl.status();
  out.mean_nll = ppl->mean_nll;
  out.tokens = ppl->tokens_scored;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace kvshare
