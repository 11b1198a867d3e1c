// Formatting of batch positions for error messages, shared by the operators' host code.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace torchmoo {

// "[i, j, ...]": the position of flat batch index `flat` in a batch of the given shape ("" if unbatched).
inline std::string batch_index(int64_t flat, const std::vector<int64_t>& shape) {
  if (shape.empty()) return "";
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  std::ostringstream os;
  os << "[";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << "]";
  return os.str();
}

}  // namespace torchmoo
