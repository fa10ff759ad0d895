//! OpenFlow client against a real ovs-vswitchd, checked with ovs-ofctl dump-flows / dump-meters.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]

mod common;

use common::Ovs;
use ovs_ffi::openflow::*;
use ovs_ffi::ovsdb::{BridgeSpec, Client, Config};
use std::net::Ipv4Addr;
use std::time::Duration;

async fn setup() -> (Ovs, Client) {
    let ovs = Ovs::start();
    let mut cfg = Config::new(ovs.endpoint());
    cfg.call_timeout = Duration::from_secs(10);
    let db = Client::connect(cfg).await.unwrap();
    db.ensure_bridge(&BridgeSpec {
        name: "br0".into(),
        datapath_type: Some("netdev".into()),
        fail_mode: Some("secure".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    db.wait_applied(Duration::from_secs(10)).await.unwrap();
    ovs.wait_mgmt("br0");
    (ovs, db)
}

async fn of(ovs: &Ovs, versions: &[OfVersion]) -> OfClient {
    let cfg = OfConfig {
        versions: versions.to_vec(),
        timeout: Duration::from_secs(10),
    };
    OfClient::connect(ovs.mgmt("br0"), cfg)
        .await
        .expect("OpenFlow connect")
}

const MAC: Mac = Mac([2, 0, 0, 0, 0, 1]);

fn arp_responder(ip: Ipv4Addr, vlan: Option<u16>) -> Flow {
    let mut m = Match::new().arp_tpa(ip).arp_op(1);
    if let Some(v) = vlan {
        m = m.vlan_vid(v);
    }
    Flow::new(0, 100).cookie(0xa1).matching(m).actions(
        [
            Action::arp_reply(MAC, ip),
            vec![Action::Output(Port::InPort)],
        ]
        .concat(),
    )
}

fn sample_flows() -> Vec<Flow> {
    vec![
        arp_responder(Ipv4Addr::new(10, 0, 0, 1), Some(10)),
        Flow::new(0, 10)
            .cookie(0xb2)
            .matching(
                Match::new()
                    .in_port(1)
                    .eth_src(Mac([2, 0, 0, 0, 0, 2]))
                    .eth_dst(Mac([2, 0, 0, 0, 0, 3]))
                    .ipv4_src(Ipv4Addr::new(10, 0, 0, 0), 24)
                    .ipv4_dst(Ipv4Addr::new(10, 0, 0, 5), 32),
            )
            .meter(1)
            .actions(vec![
                Action::PushVlan(0x8100),
                Action::SetField(SetField::VlanVid(10)),
                Action::PopVlan,
                Action::Output(Port::Number(3)),
                Action::Output(Port::Normal),
                Action::Output(Port::Controller(65535)),
            ])
            .goto_table(2),
        Flow::new(0, 5)
            .cookie(0xb3)
            .matching(Match::new().untagged()),
        Flow::new(2, 5).actions(vec![
            Action::Output(Port::Local),
            Action::Output(Port::Flood),
            Action::Output(Port::All),
        ]),
        Flow::new(1, 7)
            .cookie(0xc4)
            .matching(Match::new().eth_type(0x88cc))
            .actions(vec![Action::Output(Port::Normal)]),
    ]
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn flows_golden(versions: &[OfVersion]) {
    let (ovs, _db) = setup().await;
    let c = of(&ovs, versions).await;
    assert_eq!(c.version().await.unwrap(), *versions.iter().max().unwrap());
    c.echo().await.unwrap();
    c.barrier().await.unwrap();

    // The meter the flows use.
    let meter = Meter::drop_kbps(1, 1000, Some(100));
    assert!(c.ensure_meter(&meter).await.unwrap());
    assert!(
        !c.ensure_meter(&meter).await.unwrap(),
        "second ensure must not change the meter"
    );

    let flows = sample_flows();
    for f in &flows {
        c.add_flow(f).await.unwrap();
    }
    // Idempotent: adding the same flows again leaves one of each.
    c.flow_mods(&flows.iter().cloned().map(FlowMod::Add).collect::<Vec<_>>())
        .await
        .unwrap();

    let want = sorted(flows.iter().map(|f| f.to_ofctl()).collect());
    assert_eq!(
        ovs.dump_flows("br0", &[]),
        want,
        "ovs-ofctl dump-flows vs our text form"
    );

    // Our own flow stats decode to the same flows.
    let mut got: Vec<Flow> = c
        .dump_flows(&FlowFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.flow)
        .collect();
    got.sort_by_key(|f| f.to_ofctl());
    let mut exp = flows.clone();
    exp.sort_by_key(|f| f.to_ofctl());
    assert_eq!(got, exp);

    // Filter by cookie.
    let only = c
        .dump_flows(&FlowFilter {
            cookie: 0xa1,
            cookie_mask: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].flow, flows[0]);
    // The same counted without the dump (what the ARP proxy's idle check asks).
    let agg = c
        .aggregate_stats(&FlowFilter {
            cookie: 0xa1,
            cookie_mask: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(agg.flow_count, 1);
    let all = c.aggregate_stats(&FlowFilter::default()).await.unwrap();
    assert_eq!(all.flow_count as usize, flows.len());

    // Modify strict: new actions, same match.
    let mut changed = flows[4].clone();
    changed.instructions = vec![Instruction::ApplyActions(vec![Action::Output(
        Port::Number(2),
    )])];
    c.modify_flow_strict(&changed).await.unwrap();
    assert!(ovs.dump_flows("br0", &[]).contains(&changed.to_ofctl()));

    // Modify by cookie (non-strict, empty match).
    let mut by_cookie = Flow::new(1, 0)
        .cookie(0xc4)
        .actions(vec![Action::Output(Port::Number(4))]);
    by_cookie.matches = Match::new();
    c.flow_mods(&[FlowMod::Modify {
        flow: by_cookie,
        cookie_mask: u64::MAX,
    }])
    .await
    .unwrap();
    let mut expect4 = flows[4].clone();
    expect4.instructions = vec![Instruction::ApplyActions(vec![Action::Output(
        Port::Number(4),
    )])];
    assert!(ovs.dump_flows("br0", &[]).contains(&expect4.to_ofctl()));

    // Delete strict and by cookie + mask.
    c.delete_flow_strict(0, 5, &Match::new().untagged())
        .await
        .unwrap();
    c.delete_flows_by_cookie(None, 0xa0, 0xf0).await.unwrap(); // 0xa1
    c.delete_flows_by_cookie(Some(1), 0xc4, u64::MAX)
        .await
        .unwrap();
    let left = ovs.dump_flows("br0", &[]);
    assert_eq!(left, sorted(vec![flows[1].to_ofctl(), flows[3].to_ofctl()]));

    // Deleting again is not an error (idempotent).
    c.delete_flows_by_cookie(None, 0xa0, 0xf0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_golden_of15() {
    flows_golden(&[OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_golden_of13() {
    flows_golden(&[OfVersion::V1_3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_golden_stats_and_errors() {
    let (ovs, _db) = setup().await;
    let c = of(&ovs, &[OfVersion::V1_3]).await;
    let m1 = Meter::drop_kbps(1, 2000, Some(200));
    let m2 = Meter {
        id: 2,
        pktps: true,
        burst: false,
        stats: true,
        bands: vec![Band::Drop {
            rate: 500,
            burst_size: 0,
        }],
    };
    c.add_meter(&m1).await.unwrap();
    c.add_meter(&m2).await.unwrap();
    let mgmt = ovs.mgmt("br0");
    let dump = ovs.ofctl(&["-O", "OpenFlow13", "dump-meters", mgmt.to_str().unwrap()]);
    // ovs-ofctl prints "meter=N ... bands=\ntype=drop ..."; join each meter onto one line.
    let joined = dump.replace("bands=\n", "bands=");
    let lines: Vec<&str> = joined
        .lines()
        .filter(|l| l.starts_with("meter="))
        .map(str::trim)
        .collect();
    assert_eq!(lines, [m1.to_ofctl(), m2.to_ofctl()]);
    assert_eq!(
        c.meter_configs(None).await.unwrap(),
        vec![m1.clone(), m2.clone()]
    );

    // Adding an existing meter: a decoded, readable error.
    let err = c.add_meter(&m1).await.unwrap_err();
    assert!(err.to_string().contains("OFPMMFC_METER_EXISTS"), "{err}");
    // The connection survives switch errors.
    c.echo().await.unwrap();

    // Modify through ensure.
    let m1b = Meter::drop_kbps(1, 3000, Some(300));
    assert!(c.ensure_meter(&m1b).await.unwrap());
    assert_eq!(c.meter_configs(Some(1)).await.unwrap(), vec![m1b]);

    // Stats.
    c.add_flow(
        &Flow::new(0, 1)
            .meter(2)
            .actions(vec![Action::Output(Port::Normal)]),
    )
    .await
    .unwrap();
    let stats = c.meter_stats(Some(2)).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].id, 2);
    assert_eq!(stats[0].flow_count, 1);
    assert_eq!(stats[0].bands.len(), 1);

    // Errors for bad flow_mods are decoded: a flow using a meter that does not exist.
    let err = c
        .add_flow(&Flow::new(0, 1).meter(99).actions(vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, ovs_ffi::Error::OpenFlow(_)), "{err}");
    assert!(err.to_string().contains("OFPMMFC_"), "{err}");

    c.delete_meter(2).await.unwrap();
    c.delete_meter(2).await.unwrap();
    assert_eq!(c.meter_configs(None).await.unwrap().len(), 1);
    let dump = ovs.ofctl(&["-O", "OpenFlow13", "dump-meters", mgmt.to_str().unwrap()]);
    assert!(!dump.contains("meter=2"), "{dump}");
}

async fn bundles(versions: &[OfVersion]) {
    let (ovs, _db) = setup().await;
    let c = of(&ovs, versions).await;
    let good = Flow::new(0, 50)
        .cookie(1)
        .matching(Match::new().in_port(1))
        .actions(vec![Action::Output(Port::Normal)]);
    let good2 = Flow::new(0, 51)
        .cookie(1)
        .matching(Match::new().in_port(2))
        .actions(vec![Action::Output(Port::Normal)]);
    // The second references a meter that does not exist: the whole bundle must be rejected.
    let bad = Flow::new(0, 52)
        .cookie(1)
        .matching(Match::new().in_port(3))
        .meter(77)
        .actions(vec![]);
    let err = c
        .bundle(&[
            FlowMod::Add(good.clone()),
            FlowMod::Add(bad),
            FlowMod::Add(good2.clone()),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, ovs_ffi::Error::OpenFlow(_)), "{err}");
    assert!(
        ovs.dump_flows("br0", &[]).is_empty(),
        "a failed bundle must change nothing"
    );
    c.bundle(&[FlowMod::Add(good.clone()), FlowMod::Add(good2.clone())])
        .await
        .unwrap();
    assert_eq!(
        ovs.dump_flows("br0", &[]),
        sorted(vec![good.to_ofctl(), good2.to_ofctl()])
    );
    // Replace atomically: delete by cookie + add in one bundle.
    let good3 = Flow::new(0, 53)
        .cookie(2)
        .matching(Match::new().in_port(4))
        .actions(vec![Action::Output(Port::Normal)]);
    c.bundle(&[
        FlowMod::Delete {
            table: None,
            cookie: 1,
            cookie_mask: u64::MAX,
            matches: Match::new(),
        },
        FlowMod::Add(good3.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(ovs.dump_flows("br0", &[]), vec![good3.to_ofctl()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_of14() {
    bundles(&[OfVersion::V1_3, OfVersion::V1_4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_of13_onf_extension() {
    bundles(&[OfVersion::V1_3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_vswitchd_restart() {
    let (mut ovs, db) = setup().await;
    let c = of(&ovs, &[OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5]).await;
    let f = Flow::new(0, 9)
        .cookie(3)
        .matching(Match::new().in_port(1))
        .actions(vec![Action::Output(Port::Normal)]);
    c.add_flow(&f).await.unwrap();
    ovs.kill_vswitchd();
    // While the switch is down: a clear error, bounded in time.
    let start = std::time::Instant::now();
    assert!(c.echo().await.is_err());
    assert!(start.elapsed() < Duration::from_secs(11));
    ovs.start_vswitchd();
    ovs.wait_mgmt("br0");
    // Flows do not survive a vswitchd restart; the client reconnects by itself and re-adds.
    c.add_flow(&f).await.unwrap();
    assert_eq!(ovs.dump_flows("br0", &[]), vec![f.to_ofctl()]);
    c.echo().await.unwrap();
    db.echo().await.unwrap();
}
