//! Mosquitto's command-line clients (`mosquitto_sub`, `mosquitto_pub -l`,
//! Debian `mosquitto-clients`) at their default settings.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::common::{unique, BackendKind, Gateway};

/// `mosquitto_sub` on `base/#` at QoS 1, then `mosquitto_pub -l` sending
/// three lines to `base/a` at QoS 1: the subscriber prints the three, in
/// order; over MQTT 3.1.1 and 5.
pub async fn mosquitto_clients_publish_and_subscribe(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    for version in ["mqttv311", "mqttv5"] {
        let base = unique("mosquitto");
        // Its output is a pipe, block-buffered: stdbuf makes it line by
        // line, so the SUBACK it reports is read when it comes.
        let mut sub = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                &host,
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "1",
            ])
            .args([
                "-t",
                &format!("{base}/#"),
                "-v",
                "-d",
                "-C",
                "3",
                "-W",
                "30",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub starts (Debian mosquitto-clients)");
        let lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        let (lines, got) = tokio::task::spawn_blocking(move || {
            let mut lines = lines.map_while(Result::ok);
            // With -d it reports the SUBACK; publish only after it.
            let subscribed = lines.by_ref().any(|l| l.contains("received SUBACK"));
            (lines, subscribed)
        })
        .await
        .unwrap();
        assert!(got, "mosquitto_sub ({version}) was not subscribed");

        let mut publish = Command::new("mosquitto_pub")
            .args(["-h", &host, "-p", &port, "-V", version, "-q", "1"])
            .args(["-t", &format!("{base}/a"), "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub starts");
        let mut stdin = publish.stdin.take().unwrap();
        stdin.write_all(b"m0\nm1\nm2\n").unwrap();
        drop(stdin);
        let (published, messages, received) = tokio::task::spawn_blocking(move || {
            let published = publish.wait().unwrap();
            let prefix = format!("{base}/a ");
            let messages: Vec<String> = lines.filter(|l| l.starts_with(&prefix)).collect();
            (published, messages, sub.wait().unwrap())
        })
        .await
        .unwrap();
        assert!(published.success(), "mosquitto_pub ({version}) failed");
        assert!(received.success(), "mosquitto_sub ({version}) failed");
        let payloads: Vec<&str> = messages
            .iter()
            .filter_map(|l| l.rsplit_once(' ').map(|(_, p)| p))
            .collect();
        assert_eq!(payloads, ["m0", "m1", "m2"], "{version}");
    }
}
