//! Property tests of resource planning: allocation, load balancing and the deployment guide.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeSet;

use iot_planning::resources::{
    DeviceLoad, Distribution, GatewayCapacity, Latency, Processing, Requirements, ResourcePlan,
    Resources, balance, recommend,
};
use proptest::prelude::*;

fn gateways() -> impl Strategy<Value = Vec<GatewayCapacity>> {
    prop::collection::vec((1u32..8, 1u64..500), 0..6).prop_map(|gs| {
        gs.into_iter()
            .enumerate()
            .map(|(i, (max_devices, capacity))| GatewayCapacity {
                name: format!("gw{i}"),
                max_devices,
                capacity,
            })
            .collect()
    })
}

fn devices(max_load: u64) -> impl Strategy<Value = Vec<DeviceLoad>> {
    prop::collection::vec(0..=max_load, 0..40).prop_map(|ls| {
        ls.into_iter()
            .enumerate()
            .map(|(i, load)| DeviceLoad {
                name: format!("d{i}"),
                load,
            })
            .collect()
    })
}

fn latency() -> impl Strategy<Value = Latency> {
    prop::sample::select(vec![
        Latency::Relaxed,
        Latency::Moderate,
        Latency::Low,
        Latency::Critical,
    ])
}

fn processing() -> impl Strategy<Value = Processing> {
    prop::sample::select(vec![
        Processing::Simple,
        Processing::Moderate,
        Processing::Complex,
    ])
}

fn distribution() -> impl Strategy<Value = Distribution> {
    prop::sample::select(vec![
        Distribution::SingleSite,
        Distribution::MultiSite,
        Distribution::Global,
    ])
}

fn requirements() -> impl Strategy<Value = Requirements> {
    (0u32..50_000, latency(), processing(), distribution()).prop_map(
        |(devices, latency, processing, distribution)| Requirements {
            devices,
            latency,
            processing,
            distribution,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Every device is placed exactly once or reported unassigned, and no gateway exceeds its
    /// device slots or its load capacity.
    #[test]
    fn balancing_places_each_device_once_within_every_limit(
        gws in gateways(),
        devs in devices(200),
    ) {
        let a = balance(&devs, &gws).unwrap();
        let mut seen = BTreeSet::new();
        for g in &gws {
            let placed = &a.gateways[&g.name];
            prop_assert!(placed.devices.len() <= g.max_devices as usize);
            prop_assert!(placed.load <= g.capacity);
            let load: u64 = placed
                .devices
                .iter()
                .map(|d| devs.iter().find(|x| &x.name == d).unwrap().load)
                .sum();
            prop_assert_eq!(load, placed.load);
            for d in &placed.devices {
                prop_assert!(seen.insert(d.clone()));
            }
        }
        for d in &a.unassigned {
            prop_assert!(seen.insert(d.clone()));
            // Nothing was left out that fits on a gateway as the assignment leaves it.
            let load = devs.iter().find(|x| &x.name == d).unwrap().load;
            let fits_somewhere = gws.iter().any(|g| {
                let p = &a.gateways[&g.name];
                p.devices.len() < g.max_devices as usize && p.load + load <= g.capacity
            });
            prop_assert!(!fits_somewhere, "{} left out but fits", d);
        }
        prop_assert_eq!(seen.len(), devs.len());
    }

    /// On identical gateways with room to spare, heaviest-first least-loaded placement keeps
    /// the imbalance within the load of the heaviest device.
    #[test]
    fn balancing_equal_gateways_keeps_imbalance_within_one_device(
        n in 1usize..6,
        devs in devices(50),
    ) {
        let capacity = 10_000;
        let gws: Vec<_> = (0..n)
            .map(|i| GatewayCapacity { name: format!("g{i}"), max_devices: 100, capacity })
            .collect();
        let a = balance(&devs, &gws).unwrap();
        prop_assert!(a.unassigned.is_empty());
        let heaviest = devs.iter().map(|d| d.load).max().unwrap_or(0);
        let loads: Vec<u64> = a.gateways.values().map(|g| g.load).collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        prop_assert!(spread <= heaviest, "spread {} > heaviest {}", spread, heaviest);
        prop_assert!(a.imbalance_permille() <= heaviest * 1_000 / capacity + 1);
    }

    /// Checked allocation never leaves a host over-allocated, whatever the sequence of
    /// allocations and releases.
    #[test]
    fn checked_allocation_never_over_allocates(
        ops in prop::collection::vec((0usize..3, 0usize..5, 0u64..600, 0u64..600, 0u64..600, any::<bool>()), 0..60),
    ) {
        let mut plan = ResourcePlan::new();
        for h in 0..3 {
            plan.add_host(&format!("h{h}"), Resources::new(1_000, 1_000, 1_000)).unwrap();
        }
        for (h, e, cpu, mem, bw, release) in ops {
            let (host, entity) = (format!("h{h}"), format!("e{e}"));
            if release {
                let _ = plan.release(&host, &entity);
            } else {
                let before = plan.allocated(&host).unwrap();
                let result = plan.allocate(&host, &entity, Resources::new(cpu, mem, bw));
                if result.is_err() {
                    prop_assert_eq!(plan.allocated(&host).unwrap(), before);
                }
            }
            prop_assert!(plan.over_allocations().is_empty());
        }
    }

    /// Asking for more (devices, stricter latency, heavier processing, wider distribution)
    /// never yields a cheaper cost band.
    #[test]
    fn the_guide_never_gets_cheaper_when_asking_for_more(
        base in requirements(),
        more_devices in 0u32..50_000,
        lat in latency(),
        proc_ in processing(),
        dist in distribution(),
    ) {
        let cost = |r: &Requirements| recommend(r).cost.min_usd;
        let bigger = [
            Requirements { devices: base.devices.saturating_add(more_devices), ..base },
            Requirements { latency: base.latency.max(lat), ..base },
            Requirements { processing: base.processing.max(proc_), ..base },
            Requirements { distribution: base.distribution.max(dist), ..base },
        ];
        for b in bigger {
            prop_assert!(cost(&b) >= cost(&base), "{:?} cheaper than {:?}", b, base);
        }
    }
}
