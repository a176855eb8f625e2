// Helpers of the GPU tests: a fixture that skips without a device and device copies of host
// tensors.
#pragma once

#include <cuda_runtime.h>

#include "test_util.hpp"

namespace fsa::test {

class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_info().available) GTEST_SKIP() << "no CUDA device: " << cuda_device_info().reason;
  }
};

// A device copy of a host tensor; download() brings it back into a host tensor of the same shape.
class DeviceTensor {
 public:
  explicit DeviceTensor(const HostTensor& host) : host_(host) {
    bytes_ = static_cast<std::size_t>(host.numel()) * dtype_size(host.dtype());
    EXPECT_EQ(cudaMalloc(&data_, bytes_ + 16), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.view().data, bytes_, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceTensor() { cudaFree(data_); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  TensorView view() const {
    TensorView v = host_.view();
    v.data = data_;
    v.device = Device::cuda(0);
    return v;
  }
  HostTensor download() const {
    HostTensor out = host_;
    EXPECT_EQ(cudaMemcpy(out.view().data, data_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  HostTensor host_;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace fsa::test
