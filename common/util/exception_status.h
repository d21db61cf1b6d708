// Exceptions stopped at a Status boundary. kvshare code returns Status and does not throw, but
// the standard library does (std::bad_alloc, std::length_error, std::system_error), and so can
// a dependency. At a service boundary such an exception must become a Status that says what
// happened: gRPC's callback API otherwise answers it as UNIMPLEMENTED with an empty message,
// and a thread it escapes from ends the process.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvshare {

// Internal naming `what` and the exception in flight; call it only inside a catch block.
// std::bad_alloc reads "out of memory".
inline absl::Status StatusFromCurrentException(const std::string& what) {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return absl::InternalError(absl::StrCat(what, ": out of memory (std::bad_alloc)"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": unexpected exception: ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(what, ": unexpected exception of unknown type"));
  }
}

// fn() (an absl::Status or absl::StatusOr<T>), or Internal as above when it throws.
template <typename Fn>
auto CatchExceptions(const std::string& what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (...) {
    return StatusFromCurrentException(what);
  }
}

}  // namespace kvshare
