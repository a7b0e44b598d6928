// The arguments of a MindSpore aot kernel (inputs, then outputs), read by position.
#pragma once

#include <cstdint>
#include <cstring>

namespace pangu_args {

struct Args {
  int count;
  void** ptr;
  int* ndims;
  int64_t** shapes;
  const char** dtypes;

  template <class T>
  T* at(int i) const { return static_cast<T*>(ptr[i]); }
  bool half(int i) const { return std::strcmp(dtypes[i], "float16") == 0; }
  bool single(int i) const { return std::strcmp(dtypes[i], "float32") == 0; }
  // size of dimension d of tensor i; d < 0 counts from the last
  int64_t dim(int i, int d) const { return shapes[i][d < 0 ? ndims[i] + d : d]; }
  int64_t numel(int i) const {
    int64_t n = 1;
    for (int d = 0; d < ndims[i]; ++d) n *= shapes[i][d];
    return n;
  }
};

}  // namespace pangu_args

// Error codes returned to MindSpore (which then stops with "Return value ... is N").
enum KernelError : int {
  kOk = 0,
  kBadDtype = 2,      // a tensor of an unsupported dtype
  kBadShape = 3,      // shapes that do not fit together
  kBadLabel = 4,      // a label outside [0, V) that is not the pad id
  kBadArity = 5,      // wrong number of inputs (FusedAdamW's parameter count)
};
