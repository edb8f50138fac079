//! The deployment files agree with the code, so they cannot drift: the port and probe paths the
//! worker serves, the grace period against the configured shutdown grace, the configuration
//! the image ships and the worker is started with, the queue KEDA watches, and every
//! environment variable they set is one the code reads.

use std::path::{Path, PathBuf};

use ingestd::config::{AMQP_URL_ENV, Config, ENV_PREFIX};
use yaml_rust2::{Yaml, YamlLoader};

fn repository(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn documents(relative: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repository(relative)).unwrap();
    YamlLoader::load_from_str(&text).unwrap()
}

fn of_kind<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The configuration the image ships (`pipeline.toml`, at the path the Dockerfile copies it
/// to) with `env` on top.
fn shipped(env: &[(&str, &str)]) -> Result<Config, ingestd::config::ConfigError> {
    Config::load(
        Some(&repository("pipeline.toml")),
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
}

/// Whether the code reads `name`: the broker's and the state store's own variables, the
/// variables the shipped configuration names for keys, or an override it accepts.
fn read_by_the_code(name: &str, value: &str) -> bool {
    let config = shipped(&[]).unwrap();
    let keys: Vec<String> = config
        .embedding
        .providers
        .values()
        .filter_map(|p| p.api_key_env.clone())
        .chain(config.transcription.api_key_env.clone())
        .chain([config.state.key_env.clone()])
        .collect();
    name == AMQP_URL_ENV
        || name == ingestd::state::STATE_URL_ENV
        || keys.iter().any(|key| key == name)
        || (name.starts_with(ENV_PREFIX) && shipped(&[(name, value)]).is_ok_and(|c| c != config))
}

fn port_of(listen: &str) -> i64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn kubernetes_manifests_agree_with_the_code() {
    let config = shipped(&[]).unwrap();
    let port = port_of(&config.worker.listen);
    let manifests = documents("deploy/kubernetes/deployment.yaml");
    let deployment = of_kind(&manifests, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(port));
    let port_name = container["ports"][0]["name"].as_str().unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some(port_name), "{probe}");
    }
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        u64::try_from(grace).unwrap() > config.worker.shutdown_grace_secs,
        "terminationGracePeriodSeconds {grace} is not above worker.shutdown_grace_secs"
    );
    // Started with the configuration the image ships.
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let dockerfile = std::fs::read_to_string(repository("Dockerfile")).unwrap();
    let shipped_at = args.last().unwrap();
    assert_eq!(args, ["worker", "--config", *shipped_at]);
    assert!(dockerfile.contains(&format!("COPY pipeline.toml {shipped_at}")));
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    // Every variable is one the code reads; every secret it takes is in the example secret.
    let secrets = documents("deploy/kubernetes/secret.example.yaml");
    let secret = of_kind(&secrets, "Secret");
    for variable in container["env"].as_vec().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let value = variable["value"].as_str().unwrap_or("x");
        assert!(read_by_the_code(name, value), "{name} is read nowhere");
        let reference = &variable["valueFrom"]["secretKeyRef"];
        if let Some(key) = reference["key"].as_str() {
            assert_eq!(reference["name"].as_str(), Some("ingestd"));
            assert!(
                !secret["stringData"][key].is_badvalue(),
                "{key} not in the secret"
            );
        }
    }
    // The budget and KEDA find the worker's pods and deployment.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let budget = of_kind(&manifests, "PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    let scaling = documents("deploy/kubernetes/scaledobject.yaml");
    let scaled = of_kind(&scaling, "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(scaled["spec"]["minReplicaCount"].as_i64(), Some(0));
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    assert_eq!(
        trigger["metadata"]["queueName"].as_str(),
        Some(config.worker.jobs_queue.as_str())
    );
    // KEDA counts held jobs as well as waiting ones (the management API), from a key the
    // example secret has.
    assert_eq!(trigger["metadata"]["protocol"].as_str(), Some("http"));
    let auth = of_kind(&scaling, "TriggerAuthentication");
    let key = auth["spec"]["secretTargetRef"][0]["key"].as_str().unwrap();
    assert_eq!(
        auth["spec"]["secretTargetRef"][0]["parameter"].as_str(),
        Some("host")
    );
    assert!(
        !secret["stringData"][key].is_badvalue(),
        "{key} not in the secret"
    );
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    // Scraped where it serves, as the user the image runs as.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let user = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(dockerfile.contains(&format!("USER {user}")), "USER {user}");
    // The writable scratch space is where temporary files go.
    let mounts = container["volumeMounts"].as_vec().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/tmp"))
    );
}

#[test]
fn compose_agrees_with_the_code() {
    let config = shipped(&[]).unwrap();
    let compose = &documents("deploy/compose.yaml")[0];
    let worker = &compose["services"]["worker"];
    let port = port_of(&config.worker.listen);
    let published = worker["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{port}")), "{published}");
    for service in ["worker", "example"] {
        let env = compose["services"][service]["environment"]
            .as_hash()
            .unwrap();
        for (name, value) in env {
            let (name, value) = (name.as_str().unwrap(), value.as_str().unwrap());
            assert!(
                read_by_the_code(name, value),
                "{service}: {name} is read nowhere"
            );
        }
    }
    // The overrides it sets are accepted together, and the example job is a valid job.
    let env: Vec<(&str, &str)> = worker["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), v.as_str().unwrap()))
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let overridden = shipped(&env).unwrap();
    assert!(overridden.s3.allow_private_endpoints);
    let job = std::fs::read(repository("deploy/example-job.json")).unwrap();
    ingestd::job::Job::from_json(&job, overridden.chunking.limits()).unwrap();
}
