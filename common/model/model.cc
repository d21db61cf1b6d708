#include "common/model/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/fingerprint.h"
#include "common/model/gguf_gemma3.h"
#include "common/model/gguf_llama.h"
#include "common/model/llama2c.h"
#include "common/model/model_layout.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace kvshare {
namespace {

// Keeps the code, prefixes the message with where it came from.
absl::Status Annotate(const absl::Status& st, const std::string& where) {
  return absl::Status(st.code(), absl::StrCat(where, ": ", st.message()));
}

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

// "dir/stories260K.bin" -> "stories260K".
std::string FileStem(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  const size_t dot = base.find_last_of('.');
  if (dot != std::string::npos && dot > 0) base.resize(dot);
  return base;
}

}  // namespace

std::string ModelConfig::DebugString() const {
  return absl::StrFormat(
             "%s '%s': dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, head_dim %d, "
             "vocab_size %d, max_seq_len %d, rope_theta %g, norm_eps %g, %s output",
             architecture, name, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim,
             vocab_size, max_seq_len, rope_theta, norm_eps, tied_output ? "tied" : "untied") +
         (sliding_window > 0
              ? absl::StrFormat(
                    ", sliding_window %d on %d of %d layers (rope_theta %g)", sliding_window,
                    static_cast<int>(std::count(local_layer.begin(), local_layer.end(), 1)),
                    n_layers, rope_theta_local)
              : std::string());
}

Model::~Model() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
}

namespace {

// madvise(MADV_DONTNEED) on the pages [first, last) of `mapping` (page addresses), clipped to
// it; nothing when the range lies outside.
void DropPages(const void* mapping, size_t size, uintptr_t first, uintptr_t last) {
  const auto base = reinterpret_cast<uintptr_t>(mapping);
  first = std::max(first, base);
  last = std::min(last, base + size);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

uintptr_t PageBytes() { return static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)); }

}  // namespace

void Model::ReleaseResidentPages(const Tensor& t) const {
  if (mapping_ == nullptr || t.data == nullptr) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data);
  const auto base = reinterpret_cast<uintptr_t>(mapping_);
  if (begin < base || begin + t.nbytes > base + size_) return;
  const uintptr_t page = PageBytes();
  // Whole pages inside the tensor.
  DropPages(mapping_, size_, (begin + page - 1) / page * page, (begin + t.nbytes) / page * page);
}

void Model::ReleaseResidentRange(const void* begin, size_t bytes) const {
  if (mapping_ == nullptr || begin == nullptr) return;
  const auto b = reinterpret_cast<uintptr_t>(begin);
  const uintptr_t page = PageBytes();
  DropPages(mapping_, size_, b / page * page, (b + bytes) / page * page);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const std::string& tokenizer_path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open model file ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (st.st_size == 0) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": the file is empty"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  // Read-only and private: the weights are views into the page cache, shared between
  // processes that load the same file, and nothing can write through them.
  void* mapping = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return ErrnoStatus(err, absl::StrCat("cannot mmap ", path));

  auto m = absl::WrapUnique(new Model());
  m->path_ = path;
  m->mapping_ = mapping;
  m->data_ = static_cast<const uint8_t*>(mapping);
  m->size_ = size;
  absl::StatusOr<std::unique_ptr<Model>> loaded = FromStorage(std::move(m));
  if (!loaded.ok()) return Annotate(loaded.status(), path);
  // The fingerprint read every byte of the file; a backend faults each weight back in as it
  // prepares it (and repacking ones let it go again slice by slice), so a model being loaded
  // never holds the whole file resident beside its repacked weights.
  (*loaded)->ReleaseResidentRange(mapping, size);
  if ((*loaded)->format_ == ModelFormat::kLlama2c) {
    absl::Status s = (*loaded)->BindLlama2cTokenizer(tokenizer_path);
    if (!s.ok()) return s;
  }
  return loaded;
}

absl::Status Model::BindLlama2cTokenizer(const std::string& tokenizer_path) {
  std::string file = tokenizer_path;
  if (file.empty()) {
    file = DefaultLlama2cTokenizerPath(path_, config_.vocab_size);
    struct stat st;
    if (stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return absl::OkStatus();  // none
  }
  struct stat st;
  if (stat(file.c_str(), &st) == 0 && st.st_size > kMaxTokenizerFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer file %s has %d bytes, more than the limit of %d", file,
                        static_cast<int64_t>(st.st_size), kMaxTokenizerFileBytes));
  }
  absl::StatusOr<std::string> bytes = ReadFileToString(file);
  if (!bytes.ok()) return bytes.status();
  if (static_cast<int64_t>(bytes->size()) > kMaxTokenizerFileBytes) {  // grew, or not a file
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer file %s is more than the limit of %d bytes", file, kMaxTokenizerFileBytes));
  }
  FingerprintedTokenizer tokenizer;
  tokenizer.llama2c_file = *std::move(bytes);
  absl::StatusOr<std::string> v2 = ComputeModelFingerprintV2(fingerprint_v1_, tokenizer);
  if (!v2.ok()) return v2.status();
  fingerprint_ = *std::move(v2);
  tokenizer_path_ = file;
  tokenizer_sha256_ = Sha256Hex(*tokenizer.llama2c_file);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromBytes(std::vector<uint8_t> bytes,
                                                        const std::string& name) {
  auto m = absl::WrapUnique(new Model());
  m->path_ = name;
  m->owned_ = std::move(bytes);
  // operator new aligns to at least 16 bytes, and GGUF tensor offsets are multiples of the
  // alignment (>= 8), so F32 views are suitably aligned, as with a page-aligned mapping.
  m->data_ = m->owned_.data();
  m->size_ = m->owned_.size();
  absl::StatusOr<std::unique_ptr<Model>> loaded = FromStorage(std::move(m));
  if (!loaded.ok()) return Annotate(loaded.status(), name);
  return loaded;
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromStorage(std::unique_ptr<Model> m) {
  const bool is_gguf = m->size_ >= 4 && std::memcmp(m->data_, "GGUF", 4) == 0;
  if (is_gguf) {
    absl::StatusOr<GgufFile> gguf = GgufFile::Parse(m->data_, m->size_);
    if (!gguf.ok()) return gguf.status();
    m->gguf_ = std::make_unique<GgufFile>(*std::move(gguf));
    // The architecture picks the loader; the llama loader names any other it is given.
    const bool gemma3 = m->gguf_->GetString("general.architecture").value_or("") == "gemma3";
    absl::Status st = gemma3 ? LoadGemma3FromGguf(*m->gguf_, m->data_, &m->config_, &m->weights_,
                                                  &m->synthesized_)
                             : LoadLlamaFromGguf(*m->gguf_, m->data_, &m->config_, &m->weights_);
    if (!st.ok()) return st;
    m->format_ = ModelFormat::kGguf;
  } else {
    // llama2.c checkpoints have no magic: anything that is not GGUF must be a consistent
    // llama2.c checkpoint, and the error says both were tried.
    absl::Status st = LoadLlama2c(m->data_, m->size_, &m->config_, &m->weights_);
    if (!st.ok()) {
      std::string magic;
      for (size_t i = 0; i < 4 && i < m->size_; ++i) {
        absl::StrAppendFormat(&magic, "%s%02x", i ? " " : "", m->data_[i]);
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "not a GGUF file (magic bytes [%s], expected 47 47 55 46 'GGUF') and not a llama2.c "
          "checkpoint: %s",
          magic, st.message()));
    }
    m->format_ = ModelFormat::kLlama2c;
  }
  m->config_.name = FileStem(m->path_);
  if (m->config_.name.empty() && m->gguf_ != nullptr) {
    m->config_.name = m->gguf_->GetString("general.name").value_or("");
  }
  absl::StatusOr<std::string> v1 = ComputeModelFingerprintV1(m->config_, m->weights_);
  if (!v1.ok()) return v1.status();
  m->fingerprint_v1_ = *std::move(v1);
  // A llama2.c tokenizer is a separate file: Load binds it (FromBytes models have none).
  FingerprintedTokenizer tokenizer;
  tokenizer.gguf = m->gguf_.get();
  absl::StatusOr<std::string> v2 = ComputeModelFingerprintV2(m->fingerprint_v1_, tokenizer);
  if (!v2.ok()) return v2.status();
  m->fingerprint_ = *std::move(v2);
  return m;
}

int64_t Model::parameter_count() const {
  // Canonical tensors are the distinct ones: a tied output is not counted twice.
  const size_t n = CanonicalTensorSpecs(config_).size();
  int64_t count = 0;
  for (size_t i = 0; i < n; ++i) count += CanonicalTensor(weights_, i).elements();
  return count;
}

}  // namespace kvshare
