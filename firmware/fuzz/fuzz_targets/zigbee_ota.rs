//! Fuzzes the Zigbee OTA parser with arbitrary bytes, both directly and through `inspect`.
//! Nothing may panic; an accepted file's image range and element data must lie inside the input,
//! the elements must tile the image exactly, and truncating an accepted image must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_firmware::zigbee;
use ota_firmware::{Expected, FirmwareImage, inspect};

fuzz_target!(|data: &[u8]| {
    let _ = inspect(data, Expected::Auto);
    let parsed = zigbee::parse(data);
    match (&parsed, inspect(data, Expected::Zigbee)) {
        (Ok(direct), Ok(FirmwareImage::Zigbee(via_inspect))) => assert_eq!(*direct, via_inspect),
        (Err(_), Err(_)) => {}
        (direct, via_inspect) => panic!("parse gave {direct:?}, inspect gave {via_inspect:?}"),
    }
    let Ok(file) = parsed else { return };
    let image = file.image(data).expect("image range inside the input");
    assert_eq!(image.len(), file.header.total_image_size as usize);
    assert_eq!(file.file_len(), data.len() as u64);
    let mut pos = usize::from(file.header.header_len);
    for e in &file.elements {
        assert_eq!(e.offset as usize, pos);
        let data = e.data(image).expect("element data inside the image");
        assert_eq!(data.len(), e.len as usize);
        pos = e.data_range().end;
    }
    assert_eq!(pos, image.len());
    let end = file.image_range().end;
    assert!(
        zigbee::parse(&data[..end - 1]).is_err(),
        "a truncated image was accepted"
    );
});
