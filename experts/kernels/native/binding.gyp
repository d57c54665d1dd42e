{
  "targets": [
    {
      "target_name": "sparse_ffn",
      "sources": ["sparse_ffn.cc"],
      "cflags!": ["-O2"],
      "cflags_cc!": ["-O2"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-O3", "-std=c++17"] },
      "msvs_settings": { "VCCLCompilerTool": { "Optimization": 2 } }
    },
    {
      "target_name": "model",
      "sources": ["model.cc"],
      "cflags!": ["-O2"],
      "cflags_cc!": ["-O2"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-O3", "-std=c++17"] },
      "msvs_settings": { "VCCLCompilerTool": { "Optimization": 2 } }
    },
    {
      "target_name": "allocator",
      "sources": ["allocator.cc"]
    }
  ]
}
