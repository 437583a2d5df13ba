# ctest package_consumer (CMakeLists.txt): the installed package works for another project.
#   1. cmake --install of this build into WORK_DIR/prefix; the package files are there;
#   2. examples/consumer configures with find_package(peft) against that prefix (and not the
#      build tree) and builds;
#   3. its program fine-tunes the bundled stories260K with LoRA: the held-out loss it prints
#      after training is below the one before, and the adapter files exist.
# Inputs (-D): PEFT_BUILD_DIR, PEFT_SOURCE_DIR, WORK_DIR, LIBDIR (CMAKE_INSTALL_LIBDIR), Torch_DIR,
# CXX, CCACHE (may be NOTFOUND).
foreach(v PEFT_BUILD_DIR PEFT_SOURCE_DIR WORK_DIR LIBDIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "consumer_test.cmake: -D${v}=... missing")
  endif()
endforeach()

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(run_output "${out}${err}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
set(out ${WORK_DIR}/out)
file(REMOVE_RECURSE ${prefix} ${out})

run("cmake --install" ${CMAKE_COMMAND} --install ${PEFT_BUILD_DIR} --prefix ${prefix})
foreach(f include/peft/trainer.h include/peft/tuner.h include/peft/tokenizer.h
          ${LIBDIR}/libpeft.so bin/peft
          ${LIBDIR}/cmake/peft/peftConfig.cmake
          ${LIBDIR}/cmake/peft/peftConfigVersion.cmake
          ${LIBDIR}/cmake/peft/peftTargets.cmake)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "cmake --install did not install ${f} into ${prefix}")
  endif()
endforeach()
# Only the public headers: nothing of src/ (internal headers) is installed.
file(GLOB_RECURSE installed_headers RELATIVE ${prefix}/include ${prefix}/include/*)
file(GLOB_RECURSE public_headers RELATIVE ${PEFT_SOURCE_DIR}/include ${PEFT_SOURCE_DIR}/include/peft/*.h)
list(SORT installed_headers)
list(SORT public_headers)
if(NOT installed_headers STREQUAL public_headers)
  message(FATAL_ERROR "installed headers differ from include/peft/**.h:\n${installed_headers}\nvs\n${public_headers}")
endif()

set(cfg -S ${PEFT_SOURCE_DIR}/examples/consumer -B ${build} -DCMAKE_PREFIX_PATH=${prefix}
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
if(CXX)
  list(APPEND cfg -DCMAKE_CXX_COMPILER=${CXX})
endif()
if(Torch_DIR)
  list(APPEND cfg -DTorch_DIR=${Torch_DIR})
endif()
if(CCACHE AND NOT CCACHE MATCHES "NOTFOUND$")
  list(APPEND cfg -DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE})
endif()
run("configuring examples/consumer" ${CMAKE_COMMAND} ${cfg})
file(STRINGS ${build}/CMakeCache.txt peft_dir REGEX "^peft_DIR:")
if(NOT peft_dir STREQUAL "peft_DIR:PATH=${prefix}/${LIBDIR}/cmake/peft")
  message(FATAL_ERROR "the consumer found peft elsewhere: ${peft_dir}")
endif()
run("building examples/consumer" ${CMAKE_COMMAND} --build ${build})

run("running finetune" ${build}/finetune ${PEFT_SOURCE_DIR}/assets/stories260K
    ${PEFT_SOURCE_DIR}/assets/e2e/train.jsonl ${out})
message(STATUS "finetune said:\n${run_output}")
if(NOT run_output MATCHES "eval_loss before ([0-9.eE+-]+) after ([0-9.eE+-]+)")
  message(FATAL_ERROR "no 'eval_loss before X after Y' line in the output")
endif()
set(before ${CMAKE_MATCH_1})
set(after ${CMAKE_MATCH_2})
if(NOT after LESS before)
  message(FATAL_ERROR "held-out loss did not decrease: ${before} -> ${after}")
endif()
foreach(f adapter/adapter_config.json adapter/adapter_model.safetensors)
  if(NOT EXISTS ${out}/${f})
    message(FATAL_ERROR "finetune did not write ${out}/${f}")
  endif()
endforeach()
file(READ ${out}/adapter/adapter_config.json acfg)
if(NOT acfg MATCHES "\"peft_type\": *\"LORA\"")
  message(FATAL_ERROR "adapter_config.json is not a LoRA config:\n${acfg}")
endif()
message(STATUS "package_consumer: installed, built against ${prefix}, loss ${before} -> ${after}, adapter written")
