rule download_model:
    """Fetch a model's files into the Hugging Face cache on the submitting host (compute jobs
    never reach the network) and record where they are."""
    input:
        local_model_input,
    output:
        model_manifest("{role}"),
    params:
        source=lambda wildcards: model_source(wildcards.role),
    log:
        f"{LOGS}/download_model/{{role}}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../scripts/download_model.py"
