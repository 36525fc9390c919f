// Included by a hot kernel file (see kernels/cpu/isa.h) after its common part, with POLDER_ISA_SOURCE naming
// the file: includes it again once per ISA level with POLDER_ISA_NS set (and POLDER_ISA_LEVEL 2, 1, 0: GCC's
// `#pragma GCC target` does not define __AVX512F__ / __AVX2__ for the preprocessor), so that its `#else`
// section (the kernel bodies) is compiled for x86-64-v4, x86-64-v3 and the baseline. Every header the section
// uses must be included before this one: a header first seen under the pragma would compile its inline
// functions for that level only, and the linker could hand that copy to baseline code. No include guard: used
// once per file.
#ifndef POLDER_ISA_SOURCE
#error "define POLDER_ISA_SOURCE (the including file) before including kernels/cpu/isa_passes.h"
#endif

#if POLDER_ISA_PASSES
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define POLDER_ISA_NS isa_avx512
#define POLDER_ISA_LEVEL 2
#include POLDER_ISA_SOURCE
#undef POLDER_ISA_LEVEL
#undef POLDER_ISA_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define POLDER_ISA_NS isa_avx2
#define POLDER_ISA_LEVEL 1
#include POLDER_ISA_SOURCE
#undef POLDER_ISA_LEVEL
#undef POLDER_ISA_NS
#pragma GCC pop_options
#endif

#define POLDER_ISA_NS isa_baseline
#define POLDER_ISA_LEVEL 0
#include POLDER_ISA_SOURCE
#undef POLDER_ISA_LEVEL
#undef POLDER_ISA_NS
#undef POLDER_ISA_SOURCE
