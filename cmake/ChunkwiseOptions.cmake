# Warnings and sanitizers for chunkwise's own targets (never for dependencies).
function(chunkwise_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow
                           -Wnon-virtual-dtor -Wcast-align -Wno-unknown-pragmas>)
    if(CHUNKWISE_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
    endif()
  endif()
endfunction()

if(CHUNKWISE_SANITIZE)
  add_compile_options(-fsanitize=${CHUNKWISE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  # The sanitizer build also recounts the KV cache invariants after every operation.
  add_compile_definitions(CHUNKWISE_KV_CHECKS=1)
  add_link_options(-fsanitize=${CHUNKWISE_SANITIZE})
endif()
