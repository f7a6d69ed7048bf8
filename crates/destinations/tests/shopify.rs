//! The Shopify tags connector against the Shopify fake (cost-based throttling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use meridian_destinations::connector::Direction;
use meridian_destinations::shopify::{ShopifyConfig, ShopifyCustomer, ShopifyTags};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_test_support::platforms::shopify::ShopifyFake;

fn customers(n: usize) -> Vec<ShopifyCustomer> {
    (0..n)
        .map(|i| ShopifyCustomer {
            member: format!("m{i}"),
            customer_gid: format!("gid://shopify/Customer/{}", 7_000 + i),
        })
        .collect()
}

#[tokio::test]
async fn tags_and_untags_customers_within_the_cost_bucket() {
    // A small bucket: 60 customers need 600 points, the bucket holds 300 and refills 1000/s.
    let fake = ShopifyFake::new("shpat_test", 300.0, 1000.0);
    let server = fake.start().await.unwrap();
    let shopify = ShopifyTags::new(
        ShopifyConfig {
            base_url: server.base_url(),
            api_version: "2025-01".into(),
            access_token: "shpat_test".into(),
            tag: "meridian:carted-not-bought".into(),
        },
        Arc::new(Transport::new(RetryPolicy::default(), 0)),
    )
    .unwrap();
    let mut all = customers(60);
    all.push(ShopifyCustomer {
        member: "broken".into(),
        customer_gid: "gid://shopify/Order/1".into(),
    });
    let outcome = shopify.sync(Direction::Add, &all).await.unwrap();
    assert_eq!(outcome.accepted, 60);
    assert_eq!(outcome.failed.len(), 1);
    assert!(outcome.failed["broken"].contains("userError"));
    assert!(
        fake.tags("gid://shopify/Customer/7000")
            .contains("meridian:carted-not-bought")
    );
    assert!(
        fake.tags("gid://shopify/Customer/7059")
            .contains("meridian:carted-not-bought")
    );

    let removed = shopify.sync(Direction::Remove, &all[..1]).await.unwrap();
    assert_eq!(removed.accepted, 1);
    assert!(fake.tags("gid://shopify/Customer/7000").is_empty());
    assert!(!fake.tags("gid://shopify/Customer/7001").is_empty());
}
