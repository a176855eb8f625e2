// Helpers of the GPU tests: a fixture that skips without a device and device copies of host
// tensors.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>

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

// Device copies of named host tensors. add() skips a host tensor without sizes (an absent optional
// argument), and a name without a copy views as an undefined tensor.
class DeviceTensors {
 public:
  void add(const std::string& name, const HostTensor& host) {
    if (!host.sizes().empty()) tensors_[name] = std::make_unique<DeviceTensor>(host);
  }
  TensorView view(const std::string& name) const {
    const auto it = tensors_.find(name);
    return it == tensors_.end() ? TensorView{} : it->second->view();
  }
  const DeviceTensor& at(const std::string& name) const { return *tensors_.at(name); }
  HostTensor download(const std::string& name) const { return at(name).download(); }
  // The layer's inputs from the copies named q, k, v, cu, w_k, pe_k, w_v and gates.
  NsaLayerInputs layer_inputs() const {
    return {view("q"), view("k"), view("v"), view("cu"), view("w_k"), view("pe_k"), view("w_v"), view("gates")};
  }

 private:
  std::map<std::string, std::unique_ptr<DeviceTensor>> tensors_;
};

}  // namespace fsa::test
