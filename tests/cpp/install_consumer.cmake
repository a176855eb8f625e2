# CTest install_consumer (label cpu): installs the built library (component fsa) into a fresh
# prefix and builds examples/cpp_consumer against it twice, through find_package(fsa) and with the
# README's manual link line, then runs both. Run by CTest as `cmake -P` with:
#   FSA_BUILD_DIR, FSA_SOURCE_DIR, FSA_WORK_DIR, FSA_LIBDIR (the install's lib directory name),
#   FSA_CXX_COMPILER, FSA_WITH_CUDA and, with CUDA, FSA_CUDA_LIBRARY_DIR.
cmake_minimum_required(VERSION 3.24)

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${what} failed (${rc}):\n  ${ARGN}\n${out}")
  endif()
  message(STATUS "install_consumer: ${what}: ok")
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${FSA_WORK_DIR}/prefix)
set(consumer ${FSA_SOURCE_DIR}/examples/cpp_consumer)
file(REMOVE_RECURSE ${FSA_WORK_DIR})

run("install" ${CMAKE_COMMAND} --install ${FSA_BUILD_DIR} --prefix ${prefix} --component fsa)
foreach(file include/fsa/fsa.hpp ${FSA_LIBDIR}/libfsa.a ${FSA_LIBDIR}/cmake/fsa/fsaConfig.cmake)
  if(NOT EXISTS ${prefix}/${file})
    message(FATAL_ERROR "install_consumer: ${file} was not installed")
  endif()
endforeach()

# find_package(fsa) and the fsa::fsa target.
run("configure the consumer" ${CMAKE_COMMAND} -S ${consumer} -B ${FSA_WORK_DIR}/build -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${FSA_CXX_COMPILER})
run("build the consumer" ${CMAKE_COMMAND} --build ${FSA_WORK_DIR}/build)
run("run the consumer" ${FSA_WORK_DIR}/build/fsa_consumer)
if(NOT run_output MATCHES "fsa_consumer: ok")
  message(FATAL_ERROR "install_consumer: unexpected output:\n${run_output}")
endif()

# The manual link line of the README: the static library, then the CUDA runtime in a CUDA build.
set(link ${prefix}/${FSA_LIBDIR}/libfsa.a -lpthread)
if(FSA_WITH_CUDA)
  list(APPEND link -L${FSA_CUDA_LIBRARY_DIR} -lcudart -Wl,-rpath,${FSA_CUDA_LIBRARY_DIR})
endif()
run("link by hand" ${FSA_CXX_COMPILER} -std=c++20 -O1 ${consumer}/main.cpp -I${prefix}/include ${link}
    -o ${FSA_WORK_DIR}/fsa_consumer_manual)
run("run the hand-linked consumer" ${FSA_WORK_DIR}/fsa_consumer_manual)
if(NOT run_output MATCHES "fsa_consumer: ok")
  message(FATAL_ERROR "install_consumer: unexpected output:\n${run_output}")
endif()
