#include "inference_service/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {

struct Scheduler::Sequence {
  Sequence(GenerationRequest r, GenerationSink* sink_in, const Tokenizer& tokenizer)
      : request(std::move(r)),
        sink(sink_in),
        sampler(request.sampling),
        tracker(tokenizer, request.prompt.back(), request.max_tokens, request.stop,
                request.ignore_eos),
        prev_token(request.prompt.back()) {}

  GenerationRequest request;
  GenerationSink* sink;
  Sampler sampler;
  CompletionTracker tracker;
  SeqId seq = 0;
  bool in_engine = false;
  bool done = false;
  int64_t reserved_blocks = 0;
  KvBlockCounts reserved_by_type;  // the same per KV type (a plan may mix them)
  size_t prefilled = 0;            // prompt tokens already in the cache
  int32_t next_token = 0;          // once prefilled: the sampled token the next step appends
  int32_t prev_token;              // for decoding the next piece (and alternatives' text)
  absl::Time accepted, admitted, first_sample, last_token;
  bool admitted_yet = false, sampled_yet = false;
};

namespace {

double Sec(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// A cancellation this close to the request's deadline is counted as the deadline.
constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(250);

// The metrics label of a finished request.
std::string ResultLabel(FinishReason reason, const absl::Status& status) {
  if (status.ok()) return FinishReasonName(reason);
  switch (status.code()) {
    case absl::StatusCode::kCancelled:
      return "cancelled";
    case absl::StatusCode::kDeadlineExceeded:
      return "deadline_exceeded";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    default:
      return "error";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(std::unique_ptr<Engine> engine,
                                                             const Tokenizer& tokenizer,
                                                             const SchedulerOptions& options,
                                                             ServingMetrics* metrics) {
  if (engine == nullptr) return absl::InvalidArgumentError("scheduler: no engine");
  if (options.step_tokens < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("step_tokens %d must be >= 2", options.step_tokens));
  }
  if (options.max_batch < 1 || options.max_batch > options.step_tokens / 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_batch %d must be in [1, step_tokens / 2 = %d] so prefill always gets rows",
        options.max_batch, options.step_tokens / 2));
  }
  if (options.max_queue < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_queue %d must be >= 0", options.max_queue));
  }
  std::unique_ptr<Scheduler> s(new Scheduler(std::move(engine), tokenizer, options, metrics));
  s->PublishLoad();
  s->thread_ = std::thread([p = s.get()] { p->Loop(); });
  return s;
}

Scheduler::Scheduler(std::unique_ptr<Engine> engine, const Tokenizer& tokenizer,
                     const SchedulerOptions& options, ServingMetrics* metrics)
    : tokenizer_(tokenizer),
      options_(options),
      metrics_(metrics),
      config_(engine->config()),
      kv_shape_(&engine->kv_cache()),
      total_blocks_(engine->kv_cache().total_blocks()),
      block_tokens_(engine->kv_cache().geometry().block_tokens),
      block_bytes_(engine->kv_cache().block_bytes()),
      backend_name_(engine->backend().name()),
      engine_(std::move(engine)) {
  absl::MutexLock lock(&mu_);
  load_.queue_capacity = options_.max_queue;
  load_.kv_blocks_total = total_blocks_;
  load_.kv_blocks_free = total_blocks_;
}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    draining_ = true;
    if (cancel_all_.ok()) cancel_all_ = absl::UnavailableError("worker stopped");
  }
  if (thread_.joinable()) thread_.join();
}

int64_t Scheduler::BlocksFor(const SharingStrategy& strategy, int64_t tokens) const {
  // Pure arithmetic on immutable geometry: safe beside the scheduler thread.
  return kv_shape_->BlocksFor(strategy, tokens);
}

int64_t Scheduler::CapacityTokens(const SharingStrategy& strategy) const {
  auto fits = [&](int64_t blocks_per_layer) {
    return kv_shape_->FitsEmpty(
        kv_shape_->BlocksByType(strategy, blocks_per_layer * block_tokens_));
  };
  int64_t lo = 0, hi = 1;  // fits(lo); doubling until hi does not
  while (fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo * block_tokens_;
}

absl::Status Scheduler::Submit(GenerationRequest request, GenerationSink* sink) {
  const SharingStrategy& strategy = *request.strategy.strategy;
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t total = prompt + request.max_tokens;
  if (total > config_.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max_tokens (%d) = %d tokens exceeds the model's context of %d "
        "tokens",
        prompt, request.max_tokens, total, config_.max_seq_len));
  }
  const KvBlockCounts need = kv_shape_->BlocksByType(strategy, total);
  if (!kv_shape_->FitsEmpty(need)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max_tokens (%d) = %d tokens need %d KV blocks (%s) under strategy "
        "version %d (%d of %d layers own KV); the whole pool (%d %s blocks) holds %d tokens "
        "under this strategy",
        prompt, request.max_tokens, total, need.total(), need.ToString(), request.strategy.version,
        strategy.owning_layers(), strategy.n_layers(), total_blocks_,
        KvTypeName(kv_shape_->geometry().type), CapacityTokens(strategy)));
  }
  auto seq = std::make_unique<Sequence>(std::move(request), sink, tokenizer_);
  seq->accepted = absl::Now();
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("worker is draining: not accepting requests");
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "admission queue full: %d requests waiting (max_queue %d), %d running; retry later",
        queue_.size(), options_.max_queue, load_.running));
  }
  sink->OnAccepted(seq->request);
  queue_.push_back(std::move(seq));
  load_.queued = static_cast<int>(queue_.size());
  if (metrics_ != nullptr) metrics_->queue_depth.Set(load_.queued);
  return absl::OkStatus();
}

SchedulerLoad Scheduler::Load() const {
  absl::MutexLock lock(&mu_);
  return load_;
}

void Scheduler::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  load_.draining = true;
}

bool Scheduler::IsIdle() const { return load_.running == 0 && queue_.empty(); }

bool Scheduler::WaitUntilIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(this, &Scheduler::IsIdle), timeout);
}

void Scheduler::CancelAll(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (cancel_all_.ok()) cancel_all_ = why.ok() ? absl::CancelledError("cancelled") : why;
  draining_ = true;
  load_.draining = true;
  wake_ = true;
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

bool Scheduler::HasWork() const { return !queue_.empty() || stopping_ || wake_; }

void Scheduler::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (running_.empty()) {
        // Idle: sleep until a request arrives (or a cancellation, or stop).
        mu_.AwaitWithTimeout(absl::Condition(this, &Scheduler::HasWork), absl::Seconds(1));
      }
      wake_ = false;
      if (stopping_ && queue_.empty() && running_.empty()) break;
    }
    Reap(absl::Now());
    Admit(absl::Now());
    if (!running_.empty()) RunStep();
    PublishLoad();
  }
  PublishLoad();
}

void Scheduler::Reap(absl::Time now) {
  absl::Status all;
  std::vector<std::unique_ptr<Sequence>> dropped;
  auto stop_status = [&](const Sequence& s) -> absl::Status {
    if (!all.ok()) return all;
    if (s.request.deadline <= now) return absl::DeadlineExceededError("deadline exceeded");
    if (s.sink->IsCancelled()) {
      // The client's timer fires before the server's (the deadline travels as a timeout and
      // the server starts it on arrival), so its deadline shows up here as a cancellation.
      if (s.request.deadline - now <= kDeadlineSlack) {
        return absl::DeadlineExceededError("deadline exceeded");
      }
      return absl::CancelledError("cancelled by the client");
    }
    return absl::OkStatus();
  };
  {
    absl::MutexLock lock(&mu_);
    all = cancel_all_;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (!stop_status(**it).ok()) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : dropped) Finish(*s, FinishReason::kCancelled, stop_status(*s), now);
  bool any = false;
  for (auto& s : running_) {
    absl::Status why = stop_status(*s);
    if (!why.ok()) {
      Finish(*s, FinishReason::kCancelled, why, now);
      any = true;
    }
  }
  if (any) {
    running_.erase(
        std::remove_if(running_.begin(), running_.end(), [](const auto& s) { return s->done; }),
        running_.end());
  }
}

void Scheduler::Admit(absl::Time now) {
  while (static_cast<int>(running_.size()) < options_.max_batch) {
    std::unique_ptr<Sequence> s;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) break;
      const GenerationRequest& r = queue_.front()->request;
      const KvCache& kv = engine_->kv_cache();
      const KvBlockCounts need = kv.BlocksByType(
          *r.strategy.strategy, static_cast<int64_t>(r.prompt.size()) + r.max_tokens);
      // First come, first served: a head that does not fit yet waits for blocks to free up,
      // and nothing behind it jumps the queue. What the running sequences may still take
      // (reserved - used, per type) plus the head's worst case must fit the pool now; with
      // one KV type that is reserved + need <= total blocks.
      KvBlockCounts more = reserved_by_type_;
      more += need;
      more -= kv.UsedByType();
      if (!kv.Fits(more)) break;
      s = std::move(queue_.front());
      queue_.pop_front();
      s->reserved_blocks = need.total();
      s->reserved_by_type = need;
      reserved_blocks_ += need.total();
      reserved_by_type_ += need;
      // Counted under the same lock as the pop, so Load() is consistent and WaitUntilIdle
      // never sees a gap.
      load_.running = static_cast<int>(running_.size()) + 1;
      load_.queued = static_cast<int>(queue_.size());
      load_.kv_blocks_reserved = reserved_blocks_;
    }
    auto seq = engine_->AddSequence(s->request.strategy.strategy);
    if (!seq.ok()) {
      reserved_blocks_ -= s->reserved_blocks;
      reserved_by_type_ -= s->reserved_by_type;
      spdlog::error("event=add_sequence_failed request_id={} status={}",
                    runtime::LogValue(s->request.id), runtime::LogValue(seq.status().ToString()));
      Finish(*s, FinishReason::kCancelled, absl::InternalError(seq.status().ToString()), now);
      continue;
    }
    s->seq = *seq;
    s->in_engine = true;
    s->admitted = now;
    s->admitted_yet = true;
    if (metrics_ != nullptr) metrics_->prompt_tokens.Increment(double(s->request.prompt.size()));
    running_.push_back(std::move(s));
  }
}

void Scheduler::RunStep() {
  // Decode rows first, then prefill chunks in the rows left (oldest first).
  struct Row {
    Sequence* seq;
    int prefill;  // prompt tokens in this step; 0 = a decode row
  };
  std::vector<Row> rows;
  step_inputs_.clear();
  int budget = options_.step_tokens;
  for (auto& s : running_) {
    if (s->prefilled < s->request.prompt.size()) continue;
    step_inputs_.push_back({s->seq, absl::MakeConstSpan(&s->next_token, 1), false});
    rows.push_back({s.get(), 0});
    --budget;
  }
  for (auto& s : running_) {
    if (budget <= 0) break;
    const size_t left = s->request.prompt.size() - s->prefilled;
    if (left == 0) continue;
    const int n = static_cast<int>(std::min<size_t>(left, budget));
    step_inputs_.push_back(
        {s->seq, absl::MakeConstSpan(s->request.prompt).subspan(s->prefilled, n), false});
    rows.push_back({s.get(), n});
    budget -= n;
  }
  if (step_inputs_.empty()) return;

  const absl::Time t0 = absl::Now();
  const absl::Status status = engine_->Step(step_inputs_, &logits_);
  const absl::Time now = absl::Now();
  if (metrics_ != nullptr) {
    metrics_->step_seconds.Observe(Sec(now - t0));
    metrics_->step_rows.Observe(options_.step_tokens - budget);
    metrics_->step_sequences.Observe(static_cast<double>(rows.size()));
  }
  if (!status.ok()) {
    // Admission reserved every sequence's worst case, so this is a bug, not load: say so
    // loudly and end the step's sequences rather than retry forever.
    spdlog::error("event=step_failed sequences={} rows={} status={}", rows.size(),
                  options_.step_tokens - budget, runtime::LogValue(status.ToString()));
    for (const Row& r : rows) {
      Finish(*r.seq, FinishReason::kCancelled,
             absl::InternalError(absl::StrCat("engine step failed: ", status.message())), now);
    }
  } else {
    PublishLoad();  // before any token goes out: a client seeing one sees the step's blocks
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    for (size_t i = 0; i < rows.size(); ++i) {
      Sequence& s = *rows[i].seq;
      const auto row = absl::MakeConstSpan(logits_.data() + i * vocab, vocab);
      if (rows[i].prefill > 0) {
        s.prefilled += rows[i].prefill;
        if (s.prefilled < s.request.prompt.size()) continue;  // more chunks to come
      }
      OnSampled(s, s.sampler.Sample(row), row, now);
    }
  }
  running_.erase(
      std::remove_if(running_.begin(), running_.end(), [](const auto& s) { return s->done; }),
      running_.end());
}

void Scheduler::OnSampled(Sequence& s, int32_t id, absl::Span<const float> logits, absl::Time now) {
  if (!s.sampled_yet) {
    s.sampled_yet = true;
    s.first_sample = now;
    if (metrics_ != nullptr) metrics_->time_to_first_token.Observe(Sec(now - s.accepted));
  }
  CompletionTracker::Step step = s.tracker.Accept(id);
  if (step.emitted) {
    SampledToken token;
    token.id = id;
    token.piece = std::move(step.piece);
    if (s.request.logprobs > 0) {
      token.has_logprobs = true;
      token.logprob = LogProb(logits, id);
      for (const auto& [alt, logprob] : TopLogProbs(logits, s.request.logprobs)) {
        token.top.push_back({alt, tokenizer_.DecodeToken(s.prev_token, alt), logprob});
      }
    }
    s.prev_token = id;
    if (metrics_ != nullptr) {
      if (s.tracker.tokens().size() > 1)
        metrics_->inter_token_latency.Observe(Sec(now - s.last_token));
      metrics_->generated_tokens.Increment();
    }
    s.last_token = now;
    s.sink->OnToken(token);
  }
  if (step.finished) {
    Finish(s, step.finish, absl::OkStatus(), now);
    return;
  }
  s.next_token = id;
}

void Scheduler::Finish(Sequence& s, FinishReason reason, const absl::Status& status,
                       absl::Time now) {
  if (s.in_engine) {
    engine_->RemoveSequence(s.seq);
    reserved_blocks_ -= s.reserved_blocks;
    reserved_by_type_ -= s.reserved_by_type;
    s.in_engine = false;
  }
  s.done = true;
  GenerationOutcome out;
  out.finish = reason;
  out.status = status;
  out.prompt_tokens = static_cast<int>(s.request.prompt.size());
  out.completion_tokens = static_cast<int>(s.tracker.tokens().size());
  GenerationTimings& t = out.timings;
  if (!s.admitted_yet) {
    t.queue_seconds = Sec(now - s.accepted);
  } else {
    t.queue_seconds = Sec(s.admitted - s.accepted);
    if (s.sampled_yet) {
      t.prefill_seconds = Sec(s.first_sample - s.admitted);
      t.decode_seconds = Sec(now - s.first_sample);
      t.time_to_first_token_seconds = Sec(s.first_sample - s.accepted);
    } else {
      t.prefill_seconds = Sec(now - s.admitted);
    }
  }
  const std::string result = ResultLabel(reason, status);
  if (metrics_ != nullptr) {
    metrics_->requests(result).Increment();
    metrics_->e2e_request_latency.Observe(Sec(now - s.accepted));
    metrics_->request_queue_time.Observe(t.queue_seconds);
  }
  spdlog::info(
      "event=request_finished request_id={} result={} prompt_tokens={} completion_tokens={} "
      "strategy_version={} queue_s={:.4f} ttft_s={:.4f} decode_s={:.4f}",
      runtime::LogValue(s.request.id), result, out.prompt_tokens, out.completion_tokens,
      s.request.strategy.version, t.queue_seconds, t.time_to_first_token_seconds, t.decode_seconds);
  s.sink->OnFinished(out);  // the last touch of the sink
}

void Scheduler::PublishLoad() {
  const KvCache& kv = engine_->kv_cache();
  absl::MutexLock lock(&mu_);
  load_.running = static_cast<int>(running_.size());
  load_.queued = static_cast<int>(queue_.size());
  load_.kv_blocks_used = kv.used_blocks();
  load_.kv_blocks_free = kv.free_blocks();
  load_.kv_blocks_total = kv.total_blocks();
  load_.kv_blocks_reserved = reserved_blocks_;
  load_.draining = draining_;
  if (metrics_ != nullptr) {
    metrics_->queue_depth.Set(load_.queued);
    metrics_->running_sequences.Set(load_.running);
    metrics_->kv_blocks_used.Set(double(load_.kv_blocks_used));
    metrics_->kv_blocks_free.Set(double(load_.kv_blocks_free));
    metrics_->kv_blocks_reserved.Set(double(load_.kv_blocks_reserved));
    metrics_->kv_blocks_total.Set(double(load_.kv_blocks_total));
    metrics_->kv_cache_usage_ratio.Set(load_.kv_blocks_total > 0 ? double(load_.kv_blocks_used) /
                                                                       double(load_.kv_blocks_total)
                                                                 : 0.0);
  }
}

}  // namespace kvshare
