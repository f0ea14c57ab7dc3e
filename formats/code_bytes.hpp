// Byte buffers a quantizer fills completely: resizing one leaves its bytes uninitialized, where a
// std::vector<uint8_t> would first zero them all, serially (8–16 MB per 4096 × 4096 weight, the
// time of a fifth of a parallel quantize on two cores).
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace mixq {

template <class T>
struct default_init_allocator : std::allocator<T> {
  using value_type = T;
  using is_always_equal = std::true_type;  // (stateless; std::allocator's is deprecated in C++20)
  template <class U>
  struct rebind {
    using other = default_init_allocator<U>;
  };
  default_init_allocator() = default;
  template <class U>
  default_init_allocator(const default_init_allocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialized: no value written
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

using code_bytes = std::vector<uint8_t, default_init_allocator<uint8_t>>;

}  // namespace mixq
