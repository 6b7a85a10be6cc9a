# The built-in demo's inputs (config/demo.yaml sets demo: true): synthetic videos and tiny
# random-weight models in the real on-disk formats.


localrules:
    demo_video,
    demo_models,


wildcard_constraints:
    name="|".join(re.escape(name) for name in demo_inputs.video_names()),


rule demo_video:
    output:
        f"{VIDEOS_DIR}/{{name}}",
    params:
        seed=config["seed"],
    log:
        f"{LOGS}/demo_video/{{name}}.log",
    conda:
        "../envs/preprocess.yaml"
    script:
        "../scripts/demo_video.py"


rule demo_models:
    output:
        tokenizer_torchscript=directory(f"{RESULTS}/demo/models/tokenizer_torchscript"),
        tokenizer_diffusers=directory(f"{RESULTS}/demo/models/tokenizer_diffusers"),
        text_encoder=directory(f"{RESULTS}/demo/models/text_encoder"),
    log:
        f"{LOGS}/demo_models.log",
    conda:
        "../envs/preprocess.yaml"
    script:
        "../scripts/demo_models.py"
