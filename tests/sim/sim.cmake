# The CPU emulator of CUDA (tests/sim): its library and the source transform, shared by the emulated-device
# build (POLDER_CUDA_EMULATOR: kernels/CMakeLists.txt builds every kernels/cuda/*.cu for it) and the
# tensor-core emulator tests every build runs (tests/CMakeLists.txt). Included once, by whichever comes first.
include_guard(GLOBAL)
find_package(Python3 REQUIRED COMPONENTS Interpreter)
find_package(Threads REQUIRED)
set(POLDER_SIM_DIR ${CMAKE_CURRENT_LIST_DIR})

# polder_sim: the block scheduler (sim_runtime.cpp), the runtime API (sim_cudart.cpp), cuBLASLt and NCCL.
# Its include folder stands in for the CUDA toolkit's headers of every target that links it.
add_library(polder_sim STATIC ${POLDER_SIM_DIR}/sim_runtime.cpp ${POLDER_SIM_DIR}/sim_cudart.cpp
                              ${POLDER_SIM_DIR}/sim_cublaslt.cpp ${POLDER_SIM_DIR}/sim_nccl.cpp)
polder_target_defaults(polder_sim)
target_include_directories(polder_sim BEFORE PUBLIC ${POLDER_SIM_DIR}/include)
target_link_libraries(polder_sim PUBLIC Threads::Threads rt ${CMAKE_DL_LIBS})

# polder_sim_transform(<in.cu> <out variable>): the .cu file as C++ for the emulator, in the build folder.
function(polder_sim_transform src out)
  get_filename_component(name ${src} NAME_WE)
  set(gen ${CMAKE_BINARY_DIR}/sim/${name}.sim.cpp)
  add_custom_command(OUTPUT ${gen}
                     COMMAND ${Python3_EXECUTABLE} ${POLDER_SIM_DIR}/transform.py ${src} ${gen}
                     DEPENDS ${src} ${POLDER_SIM_DIR}/transform.py
                     COMMENT "sim: ${name}.cu as C++ for the emulator" VERBATIM)
  # CUDA code reads registers of one type through pointers to another: no strict-aliasing assumptions.
  set_source_files_properties(${gen} PROPERTIES COMPILE_OPTIONS "-fno-strict-aliasing"
                                                COMPILE_DEFINITIONS POLDER_CUDA_SIM=1)
  set(${out} ${gen} PARENT_SCOPE)
endfunction()

# The NVML stand-in (libnvidia-ml.so.1, dlopen-ed by train/energy.cpp), found through the executables'
# RUNPATH (CMAKE_BUILD_RPATH in the emulated build).
add_library(polder_sim_nvml SHARED ${POLDER_SIM_DIR}/sim_nvml.cpp)
set_target_properties(polder_sim_nvml PROPERTIES OUTPUT_NAME nvidia-ml SOVERSION 1 LIBRARY_OUTPUT_DIRECTORY
                                                 ${CMAKE_BINARY_DIR}/sim)
