# chunkwise::cuda, built where the CUDA toolkit is found (CHUNKWISE_CUDA=AUTO) or required (ON).
# Architectures default to sm_90a (H100/H200); set CMAKE_CUDA_ARCHITECTURES to change them.
set(CHUNKWISE_HAS_CUDA OFF)
if(NOT CHUNKWISE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90a)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CHUNKWISE_HAS_CUDA ON)
  elseif(CHUNKWISE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "CHUNKWISE_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "chunkwise: CUDA backend ${CHUNKWISE_HAS_CUDA}")

if(CHUNKWISE_HAS_CUDA)
  file(GLOB CHUNKWISE_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.cu ${PROJECT_SOURCE_DIR}/cuda/*.cpp)
  add_library(chunkwise_cuda ${CHUNKWISE_CUDA_SOURCES})
  add_library(chunkwise::cuda ALIAS chunkwise_cuda)
  set_target_properties(chunkwise_cuda PROPERTIES EXPORT_NAME cuda CUDA_STANDARD 20
                                                  POSITION_INDEPENDENT_CODE ON)
  target_include_directories(chunkwise_cuda PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/cuda/include>
                                                   $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(chunkwise_cuda PUBLIC chunkwise CUDA::cudart CUDA::cublas CUDA::cublasLt)
  chunkwise_warnings(chunkwise_cuda)
  target_compile_definitions(chunkwise_cuda INTERFACE CHUNKWISE_HAS_CUDA=1)
  install(TARGETS chunkwise_cuda EXPORT chunkwiseTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(DIRECTORY cuda/include/chunkwise DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
