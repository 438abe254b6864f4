use super::*;

#[test]
fn the_remapped_root_comes_from_the_engines_root_dir() {
    assert_eq!(
        remapped_ids("/var/lib/docker/100000.100000"),
        Some((100000, 100000))
    );
    assert_eq!(
        remapped_ids("/srv/docker/231072.231073"),
        Some((231072, 231073))
    );
    for bad in ["/var/lib/docker", "", "/x/100000", "/x/a.b", "/x/1.2.3"] {
        assert_eq!(remapped_ids(bad), None, "{bad:?}");
    }
}
